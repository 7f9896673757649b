/**
 * Figures: the charts of a training report as Vega-Lite 6 specifications, rendered to SVG
 * without a browser.
 *
 * A figure is a value: an id (`fig2b`), a title, a caption and a Vega-Lite spec whose
 * top-level `datasets` hold every number the chart draws (so a figure's data can be read back
 * and checked against what it was computed from). {@link render} compiles the spec to Vega 6
 * and draws it with `new View(parse(spec), { renderer: "none" }).toSVG()`, which runs headless
 * under Deno (no canvas, no DOM). The builders here ({@link line}, {@link rules},
 * {@link histogram}, …) are small pieces of Vega-Lite that the report layers and concatenates;
 * nothing draws SVG by hand.
 *
 * @module
 */
import { parse, View } from "vega";
import { compile } from "vega-lite";
import type { TopLevelSpec } from "vega-lite";

/** One data row of a chart. */
export type Row = Readonly<Record<string, number | string | boolean | null>>;

/** Named data tables of a figure (Vega-Lite `datasets`). */
export type Datasets = Readonly<Record<string, ReadonlyArray<Row>>>;

/** A piece of Vega-Lite (a unit, layer or concatenated view), untyped on purpose. */
// deno-lint-ignore no-explicit-any
export type Spec = Record<string, any>;

/** A chart with its data, title and caption. */
export interface Figure {
  /** File stem and HTML id: `fig2b`, `loss`, … */
  readonly id: string;
  /** Short title, e.g. `Fig. 2b — cosine between g_R and g_M`. */
  readonly title: string;
  /** What the chart shows and what to read from it (plain text). */
  readonly caption: string;
  /** Every number the chart draws. */
  readonly datasets: Datasets;
  /** The whole Vega-Lite spec (its `datasets` are {@link Figure.datasets}). */
  readonly spec: TopLevelSpec;
}

/** The palette shared by every chart (Tableau 10, Vega's default). */
export const COLORS = [
  "#4c78a8",
  "#f58518",
  "#e45756",
  "#72b7b2",
  "#54a24b",
  "#eeca3b",
  "#b279a2",
  "#ff9da6",
  "#9d755d",
  "#bab0ac",
] as const;

const CONFIG: Spec = {
  font: "Helvetica, Arial, sans-serif",
  view: { stroke: "#ddd" },
  axis: { labelFontSize: 11, titleFontSize: 12, gridColor: "#eee" },
  legend: { labelFontSize: 11, titleFontSize: 12, labelLimit: 320 },
  title: { fontSize: 13, anchor: "start", fontWeight: "bold" },
  range: { category: [...COLORS] },
};

/** A figure from a view spec and its datasets (the view refers to them by name). */
export function figure(o: {
  readonly id: string;
  readonly title: string;
  readonly caption: string;
  readonly datasets: Datasets;
  readonly view: Spec;
}): Figure {
  const spec = {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    background: "white",
    padding: 8,
    config: CONFIG,
    datasets: o.datasets,
    ...o.view,
  } as unknown as TopLevelSpec;
  return { id: o.id, title: o.title, caption: o.caption, datasets: o.datasets, spec };
}

/**
 * The figure drawn as an SVG document. Element ids (Vega's clip paths) are prefixed with the
 * figure's id, so several figures can be inlined in one HTML page.
 */
export async function render(f: Figure): Promise<string> {
  const vega = compile(f.spec).spec;
  const view = new View(parse(vega), { renderer: "none" });
  try {
    const svg = await view.toSVG();
    return prefixIds(svg, f.id);
  } finally {
    view.finalize();
  }
}

/** Rewrites `id="x"`, `url(#x)` and `href="#x"` to use `<prefix>-x`. */
export function prefixIds(svg: string, prefix: string): string {
  const ids = new Set([...svg.matchAll(/\sid="([^"]+)"/g)].map((m) => m[1]));
  if (ids.size === 0) return svg;
  const safe = prefix.replace(/[^A-Za-z0-9_-]/g, "_");
  return svg
    .replace(/(\sid=")([^"]+)"/g, (m, a, id) => (ids.has(id) ? `${a}${safe}-${id}"` : m))
    .replace(/url\(#([^)]+)\)/g, (m, id) => (ids.has(id) ? `url(#${safe}-${id})` : m))
    .replace(/(href=")#([^"]+)"/g, (m, a, id) => (ids.has(id) ? `${a}#${safe}-${id}"` : m));
}

/** An axis channel: a field, its type and title, and optional scale / axis settings. */
export interface Channel {
  readonly field: string;
  readonly title?: string;
  readonly type?: "quantitative" | "ordinal" | "nominal";
  readonly scale?: Spec;
  readonly axis?: Spec;
  readonly sort?: unknown;
}

const channel = (c: Channel, fallback: Channel["type"] = "quantitative"): Spec => ({
  field: c.field,
  type: c.type ?? fallback,
  ...(c.title !== undefined ? { title: c.title } : {}),
  ...(c.scale ? { scale: c.scale } : {}),
  ...(c.axis ? { axis: c.axis } : {}),
  ...(c.sort !== undefined ? { sort: c.sort } : {}),
});

/** Options of {@link line}. */
export interface LineOptions {
  /** The dataset's name in the figure's `datasets`. */
  readonly data: string;
  readonly x: Channel;
  readonly y: Channel;
  /** A series field: one line per value, coloured, with a legend. */
  readonly color?: Channel & { readonly domain?: ReadonlyArray<string> };
  /** `linear` (default), `step-after` for piecewise-constant values. */
  readonly interpolate?: string;
  /** Draw a dot at every data point. */
  readonly points?: boolean;
  /** Keep only rows where this field is a finite number (log scales drop zeros too). */
  readonly positive?: boolean;
  readonly strokeWidth?: number;
}

/** A line chart layer: y over x, one line per `color` value. */
export function line(o: LineOptions): Spec {
  const y = o.y.field;
  return {
    data: { name: o.data },
    ...(o.positive
      ? { transform: [{ filter: `isFinite(datum['${y}']) && datum['${y}'] > 0` }] }
      : { transform: [{ filter: `isValid(datum['${y}']) && isFinite(datum['${y}'])` }] }),
    mark: {
      type: "line",
      interpolate: o.interpolate ?? "linear",
      strokeWidth: o.strokeWidth ?? 1.6,
      ...(o.points ? { point: { size: 14 } } : {}),
      clip: true,
    },
    encoding: {
      x: channel(o.x),
      y: channel(o.y),
      ...(o.color
        ? {
          color: {
            ...channel(o.color, "nominal"),
            ...(o.color.domain ? { scale: { domain: o.color.domain } } : {}),
          },
        }
        : {}),
    },
  };
}

/** Options of {@link rules}. */
export interface RuleOptions {
  readonly data: string;
  /** Field of the rule's position: vertical rules for `x`, horizontal ones for `y`. */
  readonly x?: string;
  readonly y?: string;
  /** A series field for colour (with a legend) … */
  readonly color?: Channel & { readonly domain?: ReadonlyArray<string> };
  /** … or one fixed colour. */
  readonly stroke?: string;
  readonly dash?: ReadonlyArray<number>;
  readonly strokeWidth?: number;
  readonly opacity?: number;
}

/** Reference lines (`x` → vertical, `y` → horizontal) from a dataset. */
export function rules(o: RuleOptions): Spec {
  const at = o.x !== undefined
    ? { x: { field: o.x, type: "quantitative" } }
    : { y: { field: o.y, type: "quantitative" } };
  return {
    data: { name: o.data },
    mark: {
      type: "rule",
      strokeWidth: o.strokeWidth ?? 1,
      ...(o.stroke ? { stroke: o.stroke } : {}),
      ...(o.dash ? { strokeDash: o.dash } : {}),
      ...(o.opacity !== undefined ? { opacity: o.opacity } : {}),
      clip: true,
    },
    encoding: {
      ...at,
      ...(o.color
        ? {
          color: {
            ...channel(o.color, "nominal"),
            ...(o.color.domain ? { scale: { domain: o.color.domain } } : {}),
          },
        }
        : {}),
    },
  };
}

/** Options of {@link histogram}. */
export interface HistogramOptions {
  /** Rows `{x0, x1, <y>, [series]}`: one per bin (bins computed by the caller). */
  readonly data: string;
  readonly y: Channel;
  readonly xTitle: string;
  /** One outline per series value (overlaid), else filled bars. */
  readonly series?: Channel & { readonly domain?: ReadonlyArray<string> };
  readonly xScale?: Spec;
  /** Drop rows whose y is not positive (for log scales). */
  readonly positive?: boolean;
  readonly fill?: string;
}

/** A histogram from precomputed bins: bars (one series) or step outlines (several). */
export function histogram(o: HistogramOptions): Spec {
  const y = o.y.field;
  const filter = o.positive ? [{ filter: `isFinite(datum['${y}']) && datum['${y}'] > 0` }] : [];
  const x = {
    field: "x0",
    type: "quantitative",
    title: o.xTitle,
    ...(o.xScale ? { scale: o.xScale } : {}),
  };
  if (!o.series) {
    return {
      data: { name: o.data },
      transform: filter,
      mark: { type: "rect", fill: o.fill ?? COLORS[0], opacity: 0.85, clip: true },
      encoding: {
        x,
        x2: { field: "x1" },
        y: channel(o.y),
        ...(o.positive ? {} : { y2: { datum: 0 } }),
      },
    };
  }
  return {
    data: { name: o.data },
    transform: [...filter, { calculate: "(datum.x0 + datum.x1) / 2", as: "xc" }],
    mark: { type: "line", interpolate: "step", strokeWidth: 1.6, clip: true },
    encoding: {
      x: { ...x, field: "xc" },
      y: channel(o.y),
      color: {
        ...channel(o.series, "nominal"),
        ...(o.series.domain ? { scale: { domain: o.series.domain } } : {}),
      },
    },
  };
}

/** A view of layered pieces with a size and title. */
export function layer(
  o: { readonly title?: string; readonly width?: number; readonly height?: number },
  ...pieces: ReadonlyArray<Spec>
): Spec {
  return {
    ...(o.title ? { title: o.title } : {}),
    width: o.width ?? 460,
    height: o.height ?? 220,
    layer: pieces,
    resolve: { scale: { color: "independent" } },
  };
}

/** Views side by side; each keeps its own scales. */
export const hconcat = (...views: ReadonlyArray<Spec>): Spec => ({
  hconcat: views,
  resolve: { scale: { color: "independent", x: "independent", y: "independent" } },
  spacing: 36,
});

/** Views one above the other; each keeps its own scales. */
export const vconcat = (...views: ReadonlyArray<Spec>): Spec => ({
  vconcat: views,
  resolve: { scale: { color: "independent", x: "independent", y: "independent" } },
  spacing: 24,
});

/** Options of {@link ranges}. */
export interface RangesOptions {
  /**
   * Rows `{<category>, min, p01, q1, median, q3, p99, max}`: a whisker from `p01` to `p99`
   * (thin from `min` to `max`), a box from `q1` to `q3` and a tick at the median.
   */
  readonly data: string;
  readonly category: Channel;
  readonly yTitle: string;
  readonly fill?: string;
}

/** Distribution summaries per category (a box plot from precomputed quantiles). */
export function ranges(o: RangesOptions): Spec[] {
  const x = channel(o.category, "ordinal");
  const data = { name: o.data };
  const y = (field: string, title?: string) => ({
    field,
    type: "quantitative",
    ...(title ? { title } : {}),
  });
  return [
    {
      data,
      mark: { type: "rule", stroke: "#999", strokeWidth: 1 },
      encoding: { x, y: y("min", o.yTitle), y2: { field: "max" } },
    },
    {
      data,
      mark: { type: "rule", stroke: "#333", strokeWidth: 2 },
      encoding: { x, y: y("p01"), y2: { field: "p99" } },
    },
    {
      data,
      mark: { type: "bar", fill: o.fill ?? COLORS[0], opacity: 0.85, width: { band: 0.6 } },
      encoding: { x, y: y("q1"), y2: { field: "q3" } },
    },
    {
      data,
      mark: { type: "tick", color: "white", thickness: 2, bandSize: 0.6 * 14 },
      encoding: { x, y: y("median") },
    },
  ];
}
