export type Level = "debug" | "info" | "warn" | "error";
const ORDER: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };
const EMAIL = /([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})/g;
const SECRET_FIELD = /(key|secret|token|password|authorization)/i;

/** Masks e-mail addresses: "maya@example.com" becomes "m***@example.com". */
export function maskEmails(text: string): string {
  return text.replace(EMAIL, "$1***@$2");
}

function scrub(value: unknown, key = ""): unknown {
  if (SECRET_FIELD.test(key) && value !== undefined) return "[redacted]";
  if (typeof value === "string") return maskEmails(value);
  if (value instanceof Error) return maskEmails(value.message);
  if (Array.isArray(value)) return value.map((v) => scrub(v));
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, scrub(v, k)]));
  }
  return value;
}

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  child(fields: Record<string, unknown>): Logger;
}

/** "json" for machines (production), "pretty" for a person at a terminal. */
export type LogFormat = "json" | "pretty";

/** LOG_FORMAT=auto: pretty when stderr is a terminal, JSON otherwise. */
export function logFormat(setting: "auto" | LogFormat): LogFormat {
  if (setting !== "auto") return setting;
  return Deno.stderr.isTerminal() ? "pretty" : "json";
}

/** The fields a person reading a pretty line wants; the JSON line keeps them all. */
const PRETTY_FIELDS = [
  "task_id",
  "step",
  "attempt",
  "duration_ms",
  "retry_in_ms",
  "status",
  "url",
  "error",
  "detail",
];
const COLOUR: Record<Level, string> = {
  debug: "\x1b[90m",
  info: "\x1b[36m",
  warn: "\x1b[33m",
  error: "\x1b[31m",
};

/** One line: time, coloured level, message, then the fields that matter as key=value. */
export function prettyLine(record: Record<string, unknown>, colour = true): string {
  const level = String(record.level);
  const time = String(record.time).slice(11, 23);
  const tag = level.toUpperCase().padEnd(5);
  const fields = PRETTY_FIELDS.filter((k) => record[k] !== undefined && record[k] !== null)
    .map((k) => {
      const value = record[k];
      const text = typeof value === "string" ? value : JSON.stringify(value);
      return `${k}=${/\s/.test(text) ? JSON.stringify(text) : text}`;
    });
  const paint = colour ? `${COLOUR[level as Level] ?? ""}${tag}\x1b[0m` : tag;
  return [time, paint, String(record.msg), ...fields].join(" ");
}

const encoder = new TextEncoder();
let buffered: string[] = [];
let flushing: ReturnType<typeof setTimeout> | null = null;

/** Writes the log lines still buffered (see stderrLine) to stderr now. */
export function flushLog(): void {
  if (flushing !== null) clearTimeout(flushing);
  flushing = null;
  if (buffered.length === 0) return;
  const bytes = encoder.encode(buffered.join("\n") + "\n");
  buffered = [];
  try {
    for (let written = 0; written < bytes.length;) {
      written += Deno.stderr.writeSync(bytes.subarray(written));
    }
  } catch {
    // stderr is gone (a closed pipe): logging never takes the process down.
  }
}

/**
 * The default sink: a line to stderr. Debug and info lines of one event-loop turn go out in one
 * write (a worker logs every task: a write each cost about 8 % of its CPU); warnings and errors
 * go out at once, with whatever was buffered before them, as does everything at exit.
 */
function stderrLine(line: string, urgent: boolean): void {
  buffered.push(line);
  if (urgent) flushLog();
  else flushing ??= setTimeout(flushLog, 0);
}
globalThis.addEventListener("unload", flushLog);

/**
 * Log lines on stderr: JSON (one object a line) or pretty; secrets redacted by field name and
 * e-mails masked everywhere, in both formats.
 */
export function createLogger(
  level: Level,
  base: Record<string, unknown> = {},
  write: (line: string, urgent: boolean) => void = stderrLine,
  format: LogFormat = "json",
): Logger {
  const min = ORDER[level];
  const emit = (lvl: Level, msg: string, fields?: Record<string, unknown>) => {
    if (ORDER[lvl] < min) return;
    const record = scrub({ time: new Date().toISOString(), level: lvl, msg, ...base, ...fields });
    const fieldsOf = record as Record<string, unknown>;
    write(
      format === "pretty" ? prettyLine(fieldsOf) : JSON.stringify(record),
      ORDER[lvl] >= ORDER.warn,
    );
  };
  return {
    debug: (m, f) => emit("debug", m, f),
    info: (m, f) => emit("info", m, f),
    warn: (m, f) => emit("warn", m, f),
    error: (m, f) => emit("error", m, f),
    child: (fields) => createLogger(level, { ...base, ...fields }, write, format),
  };
}
