// Bodies in the Azure endpoint's formats, as Azure's own clients write them.

/** MIME base64 as Python's base64.encodebytes or email writes it: lines of 76 characters, each ending in `newline`. */
export function mimeBase64(bytes: Uint8Array, newline = '\n'): string {
  return (
    (
      Buffer.from(bytes)
        .toString('base64')
        .match(/.{1,76}/g) ?? []
    ).join(newline) + newline
  );
}

/** The body of `POST /score`: a DataFrame in split orientation. */
export function splitRequest(columns: string[], data: unknown[][], index?: unknown[]) {
  return { input_data: { columns, ...(index ? { index } : {}), data } };
}
