/**
 * Worker of bench/data.ts: makes one DIV2K-sized synthetic photograph (`width × height`) from an
 * embedded photograph, tiled with mirroring (no seams) from an offset of its own, so that every
 * image of the folder differs and still has photographic texture (PNG decoding costs what it
 * costs on DIV2K). Written atomically as PNG at zlib level 1 (making 800 of them is the slow
 * part of the benchmark; decoding speed hardly depends on the level).
 */
import { encode } from "fast-png";
import * as Image from "../lib/Image.ts";

const photos = new Map<string, Image.Image>();

/** Mirror-tiled pixel index: …, n−1, 0, 1, …, n−1, n−1, …, 0, 0, 1, … */
const mirror = (i: number, n: number) => {
  const m = i % (2 * n);
  return m < n ? m : 2 * n - 1 - m;
};

self.onmessage = async (
  e: MessageEvent<{ photo: string; out: string; width: number; height: number; key: number }>,
) => {
  const { photo, out, width, height, key } = e.data;
  try {
    let src = photos.get(photo);
    if (!src) photos.set(photo, src = await Image.read(photo));
    const dx = (key * 7919) % (2 * src.width), dy = (key * 104729) % (2 * src.height);
    const data = new Uint8Array(width * height * 3);
    for (let y = 0; y < height; y++) {
      const sy = mirror(y + dy, src.height);
      for (let x = 0; x < width; x++) {
        const s = (sy * src.width + mirror(x + dx, src.width)) * 3, d = (y * width + x) * 3;
        data[d] = src.data[s];
        data[d + 1] = src.data[s + 1];
        data[d + 2] = src.data[s + 2];
      }
    }
    const png = encode({ width, height, data, depth: 8, channels: 3 }, { zlib: { level: 1 } });
    await Deno.writeFile(`${out}.tmp`, png);
    await Deno.rename(`${out}.tmp`, out);
    (self as unknown as Worker).postMessage({ ok: true });
  } catch (err) {
    (self as unknown as Worker).postMessage({ ok: false, reason: String(err) });
  }
};
