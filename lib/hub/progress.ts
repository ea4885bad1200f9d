import { formatReference, type HubReference } from './reference';

/** What a load by repo id is doing: reported while it downloads and converts. */
export type ModelProgress =
  | {
      phase: 'download';
      reference: HubReference;
      commit: string;
      /** The file being downloaded, and its bytes so far. */
      file: string;
      fileBytes: number;
      fileSize: number;
      /** All selected files' bytes so far (cached ones count as done) and in total. */
      bytes: number;
      totalBytes: number;
    }
  | { phase: 'wait'; reference: HubReference; commit: string }
  | { phase: 'convert'; reference: HubReference; commit: string }
  | { phase: 'ready'; reference: HubReference; commit: string; directory: string };

const MB = 1e6;

function mb(bytes: number): string {
  return `${(bytes / MB).toFixed(bytes < 10 * MB ? 1 : 0)} MB`;
}

/** One line describing an event, without a bar. */
export function describeProgress(event: ModelProgress): string {
  const name = `${formatReference(event.reference)} (${event.commit.slice(0, 8)})`;
  switch (event.phase) {
    case 'download': {
      const percent = event.totalBytes > 0 ? Math.floor((100 * event.bytes) / event.totalBytes) : 100;
      return `downloading ${name}: ${percent}% ${mb(event.bytes)} of ${mb(event.totalBytes)}, ${event.file}`;
    }
    case 'wait':
      return `waiting for another process that downloads or converts ${name}`;
    case 'convert':
      return `converting ${name} with the exporter`;
    case 'ready':
      return `model ${name} ready in ${event.directory}`;
  }
}

/**
 * A progress reporter that writes to a stream (stderr: nothing reaches a pipe that reads stdout). On a
 * terminal the download is one bar redrawn in place; otherwise a plain line at each new file and each
 * further 10% of the bytes, so logs stay short.
 */
export function streamProgress(stream: NodeJS.WriteStream = process.stderr): (event: ModelProgress) => void {
  const tty = stream.isTTY === true;
  let lastDraw = 0;
  let lastTenth = -1;
  let lastFile = '';
  let barShown = false;
  return (event) => {
    if (event.phase !== 'download') {
      if (barShown) stream.write('\n');
      barShown = false;
      stream.write(`clip-native: ${describeProgress(event)}\n`);
      return;
    }
    const fraction = event.totalBytes > 0 ? event.bytes / event.totalBytes : 1;
    if (tty) {
      const now = Date.now();
      if (now - lastDraw < 100 && event.bytes < event.totalBytes) return;
      lastDraw = now;
      const width = 30;
      const filled = Math.min(width, Math.round(fraction * width));
      const bar = `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}]`;
      stream.write(
        `\r\x1b[Kclip-native: ${formatReference(event.reference)} ${bar} ${Math.floor(fraction * 100)}% ${mb(event.bytes)}/${mb(event.totalBytes)} ${event.file}`,
      );
      barShown = true;
      return;
    }
    const tenth = Math.floor(fraction * 10);
    if (tenth === lastTenth && event.file === lastFile) return;
    lastTenth = tenth;
    lastFile = event.file;
    stream.write(`clip-native: ${describeProgress(event)}\n`);
  };
}
