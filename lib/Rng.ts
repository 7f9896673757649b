/**
 * Explicit, seeded randomness. Every random draw in `lib/` starts from an integer key, so the
 * same recipe and seed give the same initial weights, patches and augmentations on every run.
 *
 * The generator is SplitMix32 (a 32-bit variant of SplitMix64's finaliser): tiny, fast and good
 * enough for initialisation and data sampling; keys for sub-streams come from hashing a name.
 *
 * @module
 */

/** A stateful stream of uniform 32-bit integers, created from a key. */
export interface Stream {
  /** Next uniform float in [0, 1). */
  readonly next: () => number;
  /** Next uniform integer in [0, n). */
  readonly int: (n: number) => number;
}

/** Mixes an integer into a well-distributed 32-bit integer (SplitMix32 finaliser). */
export function mix(x: number): number {
  x = (x + 0x9e3779b9) | 0;
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}

/** Derives a sub-key from a key and a name (e.g. a parameter path), FNV-1a over the name. */
export function fold(key: number, name: string | number): number {
  let h = 0x811c9dc5 ^ mix(key);
  const s = String(name);
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return mix(h >>> 0);
}

/** A stream of uniforms from a key. */
export function stream(key: number): Stream {
  let state = mix(key) | 0;
  const nextU32 = () => {
    state = (state + 0x9e3779b9) | 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
  const next = () => nextU32() / 4294967296;
  return { next, int: (n) => Math.floor(next() * n) };
}

/** `n` uniforms in [lo, hi) from a key. */
export function uniform(key: number, n: number, lo = 0, hi = 1): Float32Array {
  const s = stream(key);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = lo + (hi - lo) * s.next();
  return out;
}

/** `n` standard normals from a key (Box–Muller). */
export function normal(key: number, n: number, mean = 0, std = 1): Float32Array {
  const s = stream(key);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u = 1 - s.next();
    const v = s.next();
    const r = Math.sqrt(-2 * Math.log(u));
    out[i] = mean + std * r * Math.cos(2 * Math.PI * v);
    if (i + 1 < n) out[i + 1] = mean + std * r * Math.sin(2 * Math.PI * v);
  }
  return out;
}
