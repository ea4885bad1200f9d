// lib/native/binding.ts's TaskKind numbers the addon's task kinds (clip::TaskKind) the same way: each kind, given
// its input, gives that kind's result, and the number after the last kind is refused.
import t from 'tap';
import { ClipError, ClipModel } from '../../lib/index';
import { TaskKind } from '../../lib/native/binding';
import { maxAbsDiff, tinyModel } from '../helpers/env';
import { sampleImages } from '../helpers/images';

t.test('TaskKind equals the addon task kinds', async (t) => {
  const model = await ClipModel.load(tinyModel, { device: 'cpu' });
  t.teardown(() => model.dispose());
  const { embedDim, contextLength, imageSize } = model.info;
  const [png] = sampleImages(1);
  const text = 'a photo of a cat';
  const one = async (kind: TaskKind, input: Uint8Array | Float32Array | Int32Array | string) => {
    const [result] = await model._submit(kind, [input]);
    if (result instanceof ClipError) throw result;
    return result;
  };

  const [wantText] = await model.embedTexts([text]);
  const [wantImage] = await model.embedImages([png]);

  const ids = await one(TaskKind.Tokenize, text);
  t.ok(ids instanceof Int32Array && ids.length === contextLength, 'Tokenize: contextLength ids');
  const pixels = await one(TaskKind.Preprocess, png);
  t.ok(pixels instanceof Float32Array && pixels.length === 3 * imageSize * imageSize, 'Preprocess: 3 x size x size');

  const fromText = await one(TaskKind.Text, text);
  t.ok(fromText instanceof Float32Array && fromText.length === embedDim, 'Text: an embedding');
  t.ok(maxAbsDiff(fromText, wantText) < 1e-5, 'Text: the text embedding');
  const eos = ids.indexOf(model.info.vocabSize - 1);
  const fromIds = await one(TaskKind.TokenIds, (ids as Int32Array).slice(0, eos + 1));
  t.ok(maxAbsDiff(fromIds, wantText) < 1e-5, 'TokenIds: the embedding of the same text');
  const fromBytes = await one(TaskKind.ImageBytes, png);
  t.ok(maxAbsDiff(fromBytes, wantImage) < 1e-5, 'ImageBytes: the image embedding');
  const fromPixels = await one(TaskKind.ImagePixels, pixels);
  t.ok(maxAbsDiff(fromPixels, wantImage) < 1e-5, 'ImagePixels: the embedding of the same image');

  const kinds = Object.values(TaskKind).filter((value) => typeof value === 'number');
  t.same(kinds, [0, 1, 2, 3, 4, 5], 'six kinds, numbered from 0');
  await t.rejects(model._submit(kinds.length as TaskKind, [text]), {
    code: 'CLIP_INVALID_ARGUMENT',
    message: /unknown task kind/,
  });
});
