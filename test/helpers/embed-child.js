// Run by tests in a process of its own, for settings read once per process (CLIP_NATIVE_MAX_CPU_ISA): loads the
// model of argv[2] with the options of argv[3] (JSON), embeds the images (paths) and texts of argv[4] (JSON) and
// prints {cpuIsa, info, vectors} or {error: {code, message}} as one line of JSON.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const root = path.resolve(__dirname, '..', '..');
const { ClipModel } = require(path.join(root, 'dist'));
const { binding } = require(path.join(root, 'dist', 'native', 'binding'));

(async () => {
  const [modelDir, optionsJson, inputsJson] = process.argv.slice(2);
  const { images, texts } = JSON.parse(inputsJson);
  const cpuIsa = binding().cpuIsa;
  let model;
  try {
    model = await ClipModel.load(modelDir, JSON.parse(optionsJson));
  } catch (error) {
    console.log(JSON.stringify({ cpuIsa, error: { code: error.code, message: error.message } }));
    return;
  }
  try {
    const imageVectors = await model.embedImages(images.map((file) => fs.readFileSync(file)));
    const textVectors = await model.embedTexts(texts);
    const vectors = [...imageVectors, ...textVectors].map((v) => Array.from(v));
    console.log(JSON.stringify({ cpuIsa, info: model.info, vectors }));
  } finally {
    await model.dispose();
  }
})();
