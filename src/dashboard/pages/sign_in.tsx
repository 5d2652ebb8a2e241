/** Sign-in: the token goes in a POST body (never a URL), for a session cookie. */
import { BASE, Layout, Notice } from "../ui.tsx";

export function SignInPage({ error }: { error?: string }) {
  return (
    <Layout title="Sign in" page="sign-in" session={null}>
      <div class="sign-in">
        <h1>Sign in</h1>
        {error && <Notice kind="error">{error}</Notice>}
        <form method="post" action={`${BASE}/sign-in`}>
          <p>
            <label for="token">Token</label>
            <input
              type="password"
              id="token"
              name="token"
              autocomplete="current-password"
              required
              autofocus
            />
          </p>
          <p class="muted">
            ADMIN_TOKEN for full access, READ_TOKEN to look without changing anything.
          </p>
          <p>
            <button type="submit" class="primary">Sign in</button>
          </p>
        </form>
      </div>
    </Layout>
  );
}
