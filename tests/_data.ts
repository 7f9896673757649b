/** Helpers of the data tests (Loader, Prepare): seeded noise images, folders of them, streams. */
import { Effect, Stream } from "effect";
import type * as Data from "../lib/Data.ts";
import * as Image from "../lib/Image.ts";
import * as Rng from "../lib/Rng.ts";

/** A random image (seeded), so that every patch position gives different pixels. */
export const noise = (w: number, h: number, key: number) =>
  Image.make(w, h, Uint8Array.from(Rng.uniform(key, w * h * 3, 0, 256), Math.floor));

/** Writes `images` (name → image) as PNG files into `dir` (created). */
export async function folder(dir: string, images: Record<string, Image.Image>): Promise<string> {
  await Deno.mkdir(dir, { recursive: true });
  for (const [name, img] of Object.entries(images)) await Image.write(`${dir}/${name}`, img);
  return dir;
}

/** Every batch of a stream. */
export const collect = <E>(s: Stream.Stream<Data.Batch, E>) =>
  Effect.runPromise(Stream.runCollect(s)).then((c) => Array.from(c));

/** shared/data: $QAT_DATA_DIR, else ../shared/data beside the repository, else /work/shared/data. */
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
