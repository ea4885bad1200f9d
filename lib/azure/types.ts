/**
 * The wire format of the Azure ML CLIP embeddings endpoint (README, "Online
 * endpoint"), as TypeScript types.
 */

/** The body of `POST /score`: a pandas DataFrame in split orientation. */
export interface ScoreRequest {
  input_data: {
    /** `image` and/or `text`, in any order. */
    columns: string[];
    /** Optional row labels; when present, as long as `data`. Not echoed. */
    index?: Array<number | string>;
    /** One array per row with one value per column; `""` or `null` means absent. */
    data: Array<Array<string | null>>;
  };
}

/** One row of a response: a feature where the row has that input. */
export interface ScoreRowResult {
  /** Image embedding (embedDim numbers, unnormalized) where the row has an image. */
  image_features?: number[];
  /** Text embedding (embedDim numbers, unnormalized) where the row has text. */
  text_features?: number[];
}

/** The 200 answer of `POST /score`: one object per row, in row order. */
export type ScoreResponse = ScoreRowResult[];

/**
 * One row as {@link scoreRows} takes it. An image is an http(s) URL, base64
 * (MIME line breaks allowed) or a `data:` URI; `""` counts as absent.
 */
export interface ScoreRowInput {
  image?: string;
  text?: string;
}

/** The body of every 4xx/5xx answer of the endpoint. */
export interface ErrorBody {
  message: string;
  code: string;
  /** The failing row (0-based, `data` order), for row-level errors; the message then starts with `row N: `. */
  row?: number;
}
