/** Where the shared photographs are, for tests that read them. */
/** shared/data: $QAT_DATA_DIR, else ../shared/data beside the repository, else /work/shared. */
export function dataDir(): string {
  const env = Deno.env.get("QAT_DATA_DIR");
  if (env) return env;
  const beside = new URL("../../shared/data", import.meta.url).pathname;
  try {
    Deno.statSync(beside);
    return beside;
  } catch {
    return "/work/shared/data";
  }
}
