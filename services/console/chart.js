// A hand-written SVG stacked bar chart: one bar per day, one stacked segment per series.
// Heights use floats (drawing only); the exact amounts are in each segment's title.

import { fromUcr, groupCredits, ucrToApproxCredits } from "./money.js";

const SVG_NS = "http://www.w3.org/2000/svg";
export const CHART_HEIGHT_PX = 260;
const MIN_CHART_WIDTH_PX = 280;
const MARGIN = { top: 12, right: 12, bottom: 34, left: 64 };
const Y_TICKS = 4;
const MIN_LABEL_SPACING_PX = 44;
const BAR_GAP_RATIO = 0.2;

// Okabe-Ito: distinguishable with the common colour-vision deficiencies.
export const PALETTE = [
  "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
];

function svg(tag, attributes = {}, text = null) {
  const element = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  if (text !== null) element.textContent = text;
  return element;
}

/** A "nice" step (1, 2 or 5 times a power of ten) so that `ticks` steps cover `max`. */
function niceStep(max, ticks) {
  if (max <= 0) return 1;
  const raw = max / ticks;
  const power = 10 ** Math.floor(Math.log10(raw));
  const multiple = [1, 2, 5, 10].find((m) => m * power >= raw);
  return multiple * power;
}

function axisLabel(value) {
  if (value >= 1e6) return `${value / 1e6}M`;
  if (value >= 1e3) return `${value / 1e3}k`;
  return String(Number(value.toPrecision(6)));
}

/**
 * Draw `series` ([{key, color, ucr: BigInt per day}]) over `days` (["YYYY-MM-DD", ...]) into
 * `container`, replacing what was there. `label` names the chart for assistive technology.
 */
export function renderStackedBars(container, days, series, label) {
  container.replaceChildren();
  const width = Math.max(MIN_CHART_WIDTH_PX, container.clientWidth || 0);
  const height = CHART_HEIGHT_PX;
  const plotWidth = width - MARGIN.left - MARGIN.right;
  const plotHeight = height - MARGIN.top - MARGIN.bottom;
  const totals = days.map((_, day) => series.reduce((sum, s) => sum + s.ucr[day], 0n));
  const max = Math.max(0, ...totals.map(ucrToApproxCredits));
  const step = niceStep(max, Y_TICKS);
  const top = Math.max(step, Math.ceil(max / step) * step);
  const y = (credits) => MARGIN.top + plotHeight - (credits / top) * plotHeight;

  const root = svg("svg", {
    width: String(width),
    height: String(height),
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": label,
    class: "chart-svg",
  });
  root.append(svg("title", {}, label));

  for (let tick = 0; tick * step <= top + step / 2; tick += 1) {
    const value = tick * step;
    root.append(
      svg("line", {
        x1: String(MARGIN.left), x2: String(width - MARGIN.right),
        y1: String(y(value)), y2: String(y(value)), class: "grid",
      }),
      svg("text", {
        x: String(MARGIN.left - 6), y: String(y(value) + 4), "text-anchor": "end", class: "tick",
      }, axisLabel(value)),
    );
  }

  const band = days.length ? plotWidth / days.length : plotWidth;
  const barWidth = Math.max(1, band * (1 - BAR_GAP_RATIO));
  const labelEvery = Math.max(1, Math.ceil(MIN_LABEL_SPACING_PX / band));
  days.forEach((day, index) => {
    const x = MARGIN.left + index * band + (band - barWidth) / 2;
    let base = 0;
    for (const s of series) {
      const ucr = s.ucr[index];
      if (ucr === 0n) continue;
      const credits = ucrToApproxCredits(ucr);
      const rect = svg("rect", {
        x: String(x), width: String(barWidth),
        y: String(y(base + credits)), height: String(Math.max(0.5, y(base) - y(base + credits))),
        fill: s.color, "data-day": day, "data-key": s.key,
      });
      rect.append(svg("title", {}, `${day} · ${s.key}: ${groupCredits(fromUcr(ucr))} credits`));
      root.append(rect);
      base += credits;
    }
    if (index % labelEvery === 0) {
      root.append(svg("text", {
        x: String(MARGIN.left + index * band + band / 2), y: String(height - MARGIN.bottom + 16),
        "text-anchor": "middle", class: "tick",
      }, day.slice(5)));
    }
  });
  root.append(svg("line", {
    x1: String(MARGIN.left), x2: String(width - MARGIN.right),
    y1: String(y(0)), y2: String(y(0)), class: "axis",
  }));
  container.append(root);
}
