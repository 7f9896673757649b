/**
 * Binary PPM (netpbm `P6`, 8-bit RGB) files: the prepared folder's random-access images.
 *
 * A patch of a PNG needs the whole file inflated first (a 2040×1356 photograph, or both
 * BasicSR-style 480×480 sub-images: 122 ms in bench/data.ts), while a PPM is a short text
 * header and then the rows as they are in memory, so the rows of one patch are one read (55 ms
 * in the same loop; both on a loaded 2-core machine). Any image viewer opens them. The header's comment
 * line records what the file was made from, so an interrupted `prepare` can tell a finished,
 * current file from one to make again.
 *
 * @module
 */

/** Where a PPM file's pixels are. */
export interface Header {
  readonly width: number;
  readonly height: number;
  /** Byte offset of the first pixel. */
  readonly offset: number;
  /** The first `#` comment line, without the `# ` (empty when there is none). */
  readonly comment: string;
}

/** The header bytes of a `width × height` PPM with one comment line. */
export function header(width: number, height: number, comment: string): Uint8Array {
  if (/[\r\n]/.test(comment)) throw new RangeError("a PPM comment is one line");
  return new TextEncoder().encode(`P6\n# ${comment}\n${width} ${height}\n255\n`);
}

/**
 * Writes `width × height` RGB pixels as a PPM, atomically: to `path + ".tmp"`, then renamed
 * over `path`, so a file under the final name is always whole.
 */
export async function write(
  path: string,
  img: { readonly width: number; readonly height: number; readonly data: Uint8Array },
  comment: string,
): Promise<void> {
  const tmp = `${path}.tmp`;
  const f = await Deno.open(tmp, { write: true, create: true, truncate: true });
  try {
    for (const part of [header(img.width, img.height, comment), img.data]) {
      let done = 0;
      while (done < part.length) done += await f.write(part.subarray(done));
    }
  } finally {
    f.close();
  }
  await Deno.rename(tmp, path);
}

/** Parses a PPM header from the first bytes of a file; undefined when it is not one. */
export function parseHeader(bytes: Uint8Array): Header | undefined {
  const text = new TextDecoder("latin1").decode(bytes);
  // P6, whitespace or comment lines, width, height, maxval 255, one whitespace byte.
  const m = /^P6((?:\s+|#[^\n]*\n)+)(\d+)\s+(?:#[^\n]*\n\s*)*(\d+)\s+(?:#[^\n]*\n\s*)*255\s/.exec(
    text,
  );
  if (!m) return undefined;
  const comment = /#\s?([^\n]*)\n/.exec(m[1])?.[1] ?? "";
  return { width: Number(m[2]), height: Number(m[3]), offset: m[0].length, comment };
}

/** Reads a PPM file's header; undefined when the file is missing or is not a whole PPM. */
export async function readHeader(path: string): Promise<Header | undefined> {
  let f: Deno.FsFile;
  try {
    f = await Deno.open(path);
  } catch {
    return undefined;
  }
  try {
    const buf = new Uint8Array(512);
    let got = 0;
    while (got < buf.length) {
      const r = await f.read(buf.subarray(got));
      if (r === null) break;
      got += r;
    }
    const h = parseHeader(buf.subarray(0, got));
    if (!h) return undefined;
    // A whole file has exactly its pixels after the header (a short one was cut off).
    const size = (await f.stat()).size;
    return size === h.offset + h.width * h.height * 3 ? h : undefined;
  } finally {
    f.close();
  }
}

/** Rows `y … y + rows − 1` of a PPM (all `width` pixels of each), one positioned read. */
export async function readRows(
  path: string,
  h: Pick<Header, "width" | "offset">,
  y: number,
  rows: number,
): Promise<Uint8Array> {
  const f = await Deno.open(path);
  try {
    const stride = h.width * 3;
    await f.seek(h.offset + y * stride, Deno.SeekMode.Start);
    const out = new Uint8Array(rows * stride);
    let got = 0;
    while (got < out.length) {
      const r = await f.read(out.subarray(got));
      if (r === null) throw new Error(`file ends after ${got} of ${out.length} bytes`);
      got += r;
    }
    return out;
  } finally {
    f.close();
  }
}
