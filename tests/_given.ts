import type { StoredEvent } from "../src/events.ts";
import { fold, type ProjectionDefinition } from "../src/projections/definition.ts";

/**
 * Given/when/then for a projection's pure evolve function, no Redis:
 * `given(taskView, [queued, started]).when(failed).then((view) => ...)`. `then` receives the
 * state folded from the projection's initial state over the given events, then the `when` ones.
 */
export function given<State>(
  projection: ProjectionDefinition<string, State>,
  history: StoredEvent[] = [],
) {
  return {
    when: (...events: StoredEvent[]) => given(projection, [...history, ...events]),
    then: (check: (state: State) => void) => check(fold(projection, history)),
  };
}
