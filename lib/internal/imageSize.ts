/**
 * The pixel size of a PNG or JPEG file from its header, without decoding it.
 *
 * The streaming loader needs every image's size before training starts (a batch's patch
 * positions are drawn from the sizes), but decoding DIV2K's 800 photographs to learn them
 * takes minutes. A PNG's size is in its first chunk (IHDR, bytes 16–23); a JPEG's in its
 * start-of-frame segment, found by walking the segments from the start. Like `Image.decode`,
 * the format comes from the magic bytes, never from the name.
 *
 * @module
 */

/** A header that could not be read, and why (the caller names the file). */
export class HeaderError extends Error {}

const PNG_MAGIC = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

/** Reads up to `n` bytes at `offset` (fewer at the end of the file). */
async function readAt(f: Deno.FsFile, offset: number, n: number): Promise<Uint8Array> {
  await f.seek(offset, Deno.SeekMode.Start);
  const buf = new Uint8Array(n);
  let got = 0;
  while (got < n) {
    const r = await f.read(buf.subarray(got));
    if (r === null) break;
    got += r;
  }
  return buf.subarray(0, got);
}

/** JPEG start-of-frame markers (C0–CF except DHT C4, JPG C8 and DAC CC). */
const isSof = (m: number) => m >= 0xc0 && m <= 0xcf && m !== 0xc4 && m !== 0xc8 && m !== 0xcc;

/** The size of a PNG or JPEG file; rejects with {@link HeaderError} (or a file error). */
export async function read(path: string): Promise<{ width: number; height: number }> {
  const f = await Deno.open(path);
  try {
    const head = await readAt(f, 0, 32);
    if (PNG_MAGIC.every((b, i) => head[i] === b)) {
      const type = String.fromCharCode(...head.subarray(12, 16));
      if (head.length < 24 || type !== "IHDR") {
        throw new HeaderError("corrupt PNG (no IHDR chunk first)");
      }
      const v = new DataView(head.buffer, head.byteOffset);
      const width = v.getUint32(16), height = v.getUint32(20);
      if (width === 0 || height === 0) throw new HeaderError("PNG has no pixels");
      return { width, height };
    }
    if (head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff) {
      // Segments: FF <marker> <length: 2 bytes, itself included>; EXIF can push SOF far in.
      let at = 2;
      for (;;) {
        const seg = await readAt(f, at, 9);
        if (seg.length < 4) throw new HeaderError("corrupt JPEG (no start-of-frame segment)");
        if (seg[0] !== 0xff) throw new HeaderError(`corrupt JPEG (no marker at byte ${at})`);
        const marker = seg[1];
        if (marker === 0xff) { // fill byte
          at += 1;
          continue;
        }
        if (marker === 0xd9 || marker === 0xda) {
          throw new HeaderError("corrupt JPEG (no start-of-frame before the image data)");
        }
        if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) { // no length field
          at += 2;
          continue;
        }
        if (isSof(marker)) {
          if (seg.length < 9) throw new HeaderError("corrupt JPEG (truncated start-of-frame)");
          const height = (seg[5] << 8) | seg[6], width = (seg[7] << 8) | seg[8];
          if (width === 0 || height === 0) throw new HeaderError("JPEG has no pixels");
          return { width, height };
        }
        at += 2 + ((seg[2] << 8) | seg[3]);
      }
    }
    throw new HeaderError("unknown format (neither PNG nor JPEG magic bytes)");
  } finally {
    f.close();
  }
}
