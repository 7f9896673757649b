/**
 * Deployment: a trained model loaded from what training or export wrote (a run folder, a
 * checkpoint file, or a packed `.qsr.safetensors` file), and super-resolution of images of any
 * size with it, tile by tile within a memory bound (lib/Tile.ts).
 *
 * A checkpoint's model is rebuilt from the recipe stored in it (architecture, scale, the
 * method's quantizers and their placement), as `deno task eval --checkpoint` does, and its
 * parameters are checked against the model's paths and shapes. A packed file carries its
 * recipe and grids (lib/Packed.ts).
 *
 * Tiling: `tile: N` caps the LR area of one tile at N² pixels (the planner of lib/Tile.ts then
 * takes the fewest tiles that fit, each overlapping its neighbours by the model's receptive
 * field, so the stitched output equals the whole-image one); without it the tiles only obey the
 * adapter's binding limit and the `QAT_TILE_MEMORY_MB` budget.
 *
 * @module
 */
import { Effect } from "effect";
import * as Checkpoint from "./Checkpoint.ts";
import type * as Image from "./Image.ts";
import type * as Nn from "./Nn.ts";
import * as Packed from "./Packed.ts";
import * as Recipe from "./Recipe.ts";
import * as Tile from "./Tile.ts";
import * as Tree from "./Tree.ts";
import type { Params } from "./Tree.ts";
import * as Registry from "../models/registry.ts";

/** A model ready to upscale with. */
export interface Model {
  readonly model: Nn.AnyLayer;
  readonly params: Params;
  readonly recipe: Recipe.Recipe;
  readonly scale: number;
  /** Where it came from: `checkpoint <file>` or `packed <file>`. */
  readonly source: string;
  /** The file read. */
  readonly file: string;
  readonly kind: "checkpoint" | "packed";
}

/** A model file could not be loaded; names the file. */
export class ModelLoadError extends Error {
  constructor(readonly file: string, readonly reason: string) {
    super(`${file}: ${reason}`);
    this.name = "ModelLoadError";
  }
}

const MAGIC = "QATSRCK1";

/** The file a `--model` argument names: a folder means `<dir>/checkpoint.bin`. */
export async function modelFile(p: string): Promise<string> {
  try {
    const s = await Deno.stat(p);
    return s.isDirectory ? `${p.replace(/\/+$/, "")}/checkpoint.bin` : p;
  } catch {
    return p;
  }
}

/** Loads a run folder, a checkpoint file or a packed file. */
export async function load(path: string): Promise<Model> {
  const file = await modelFile(path);
  let head: Uint8Array;
  try {
    const f = await Deno.open(file, { read: true });
    try {
      head = new Uint8Array(8);
      const n = (await f.read(head)) ?? 0;
      head = head.subarray(0, n);
    } finally {
      f.close();
    }
  } catch (e) {
    throw new ModelLoadError(file, `cannot read (${(e as Error).message})`);
  }
  if (new TextDecoder().decode(head) === MAGIC) return await fromCheckpoint(file);
  const bytes = await Deno.readFile(file);
  if (Packed.isPacked(bytes)) {
    const p = await Packed.decode(bytes, file);
    return {
      model: p.model,
      params: p.params,
      recipe: p.recipe,
      scale: p.scale,
      source: `packed ${file}`,
      file,
      kind: "packed",
    };
  }
  throw new ModelLoadError(
    file,
    `neither a checkpoint (${MAGIC}) nor a ${Packed.FORMAT} file (${Packed.EXTENSION})`,
  );
}

/** The model of a checkpoint, rebuilt from its stored recipe, with its parameters. */
export async function fromCheckpoint(file: string): Promise<Model> {
  const c = await Effect.runPromise(Checkpoint.read(file));
  for (const t of c.opt.values()) t.dispose();
  try {
    const recipe = await Recipe.fromJSON(c.recipe, `${file} (stored recipe)`);
    const arch = Registry.architecture(recipe.model);
    const model = Registry.quantize(recipe, arch);
    const init = Tree.flatten(model.init(recipe.train.seed));
    const mismatch = Checkpoint.check(file, c.params, init);
    Tree.dispose(Tree.unflatten(init));
    if (mismatch) throw mismatch;
    return {
      model,
      params: Tree.unflatten(c.params),
      recipe,
      scale: recipe.model.scale,
      source: `checkpoint ${file}`,
      file,
      kind: "checkpoint",
    };
  } catch (e) {
    for (const t of c.params.values()) t.dispose();
    throw e;
  }
}

/** Options of {@link upscale}. */
export interface Options {
  /** Cap on the LR area of one tile, as a side: N² pixels (see the module comment). */
  readonly tile?: number;
  /**
   * Called when `tile` is below the smallest tile that still reproduces the whole-image output
   * (twice the receptive field plus a core), with the side used instead.
   */
  readonly onTileRaised?: (asked: number, used: number) => void;
  /** Called with the plan of each image before its tiles run. */
  readonly onPlan?: (p: Tile.Plan) => void;
  /** Called after each tile (done, total). */
  readonly onTile?: (done: number, total: number) => void;
}

/**
 * The smallest tile side whose stitched output equals the whole image's: the overlap on both
 * sides (the reach, on the alignment grid) plus the least core lib/Tile.ts plans with.
 */
export function smallestExactTile(fp: Tile.Footprint): number {
  const halo = Math.ceil(fp.reach / fp.align) * fp.align;
  return 2 * halo + Math.max(fp.align, 8);
}

/** The limits a tile cap gives, on top of the adapter's own. */
export function limitsFor(fp: Tile.Footprint, tile?: number): Tile.Limits {
  const base = Tile.currentLimits();
  if (tile === undefined) return base;
  const area = tile * tile;
  return {
    tensorBytes: Math.min(base.tensorBytes, fp.tensorPerPixel * area),
    memoryBytes: Math.min(base.memoryBytes, fp.peakFixed + fp.peakPerPixel * area),
  };
}

interface Counter {
  total: number;
  done: number;
  onTile?: (done: number, total: number) => void;
}

const counters = new WeakMap<Nn.AnyLayer, { layer: Nn.AnyLayer; state: Counter }>();

/**
 * The model wrapped to count its forward passes once a plan is known (one per tile), made once
 * per model so that lib/Tile.ts measures its footprint once.
 */
function counting(model: Nn.AnyLayer): { layer: Nn.AnyLayer; state: Counter } {
  const known = counters.get(model);
  if (known) return known;
  const state: Counter = { total: 0, done: 0 };
  const layer: Nn.AnyLayer = {
    ...model,
    apply: (p, x, ctx) => {
      const y = model.apply(p, x, ctx);
      if (state.total > 0) state.onTile?.(++state.done, state.total);
      return y;
    },
  };
  const entry = { layer, state };
  counters.set(model, entry);
  return entry;
}

/**
 * The model's 8-bit SR output for an image of any size (clamped and rounded as SPEC §8), in
 * tiles where it does not fit or where `tile` asks for smaller ones.
 */
export const upscale = (
  m: Pick<Model, "model" | "params">,
  img: Image.Image,
  opts: Options = {},
): Effect.Effect<Image.Image, Tile.TooLarge> =>
  Effect.gen(function* () {
    const { layer, state } = counting(m.model);
    const fp = yield* Effect.promise(() => Tile.footprint(layer, m.params));
    state.total = 0;
    state.done = 0;
    state.onTile = opts.onTile;
    let tile = opts.tile;
    const least = smallestExactTile(fp);
    if (tile !== undefined && tile < least) {
      opts.onTileRaised?.(tile, least);
      tile = least;
    }
    return yield* Tile.superResolve(layer, m.params, img, {
      limits: limitsFor(fp, tile),
      onPlan: (p) => {
        state.total = p.tiles.length;
        opts.onPlan?.(p);
      },
    });
  });
