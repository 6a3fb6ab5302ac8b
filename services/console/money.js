// Credits as the API sends them (exact decimal strings) and as integer micro-credits (BigInt):
// sums shown as money are computed on BigInt, never on floats.

export const UCR_PER_CREDIT = 1000000n;
const FRACTION_DIGITS = 6;
const MIN_DECIMALS = 2;
const CREDITS_PATTERN = /^(-?)(\d+)(?:\.(\d{1,6}))?$/;

/** "3.18" -> 3180000n. Throws on anything that is not an exact credits string. */
export function toUcr(text) {
  const match = CREDITS_PATTERN.exec(String(text));
  if (!match) throw new Error(`not a credits amount: ${text}`);
  const [, sign, whole, fraction = ""] = match;
  const ucr = BigInt(whole) * UCR_PER_CREDIT + BigInt(fraction.padEnd(FRACTION_DIGITS, "0"));
  return sign ? -ucr : ucr;
}

/** 3180000n -> "3.18": at least two decimals, no trailing zeros beyond (as the API does). */
export function fromUcr(ucr) {
  const negative = ucr < 0n;
  const magnitude = negative ? -ucr : ucr;
  const whole = magnitude / UCR_PER_CREDIT;
  let fraction = (magnitude % UCR_PER_CREDIT).toString().padStart(FRACTION_DIGITS, "0");
  fraction = fraction.replace(/0+$/, "").padEnd(MIN_DECIMALS, "0");
  return `${negative ? "-" : ""}${whole}.${fraction}`;
}

/** The exact sum of credits strings. */
export function sumCredits(texts) {
  return fromUcr(texts.reduce((total, text) => total + toUcr(text), 0n));
}

/** "564996.82" -> "564,996.82" (thousands grouped on the string, no rounding). */
export function groupCredits(text) {
  const [whole, fraction] = String(text).split(".");
  const sign = whole.startsWith("-") ? "-" : "";
  const digits = sign ? whole.slice(1) : whole;
  const grouped = digits.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return fraction === undefined ? sign + grouped : `${sign}${grouped}.${fraction}`;
}

/** True when the credits string is zero ("0.00", "0.000000"). */
export function isZero(text) {
  return toUcr(text) === 0n;
}

/** For chart heights only: an approximate float of micro-credits as credits. */
export function ucrToApproxCredits(ucr) {
  return Number(ucr) / Number(UCR_PER_CREDIT);
}
