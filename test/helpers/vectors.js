// Vector arithmetic the tests and the benchmarks share (plain JavaScript, so that the benchmarks can require it).
'use strict';

/** Cosine similarity of two equally long vectors. */
function cosine(a, b) {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return dot / Math.sqrt(na * nb);
}

module.exports = { cosine };
