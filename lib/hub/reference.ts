import fs from 'node:fs';

/** The model a command loads when none is named. */
export const DEFAULT_MODEL = 'openai/clip-vit-base-patch32';

/** A Hugging Face model repository at a revision (a branch, tag or commit sha). */
export interface HubReference {
  /** `org/name`. */
  repo: string;
  /** Branch, tag or 40-hex commit; `main` when the reference names none. */
  revision: string;
}

// The hub's own rule for repo names: letters, digits, '-', '_', '.', not starting with '-' or '.'.
const REPO_ID = /^([A-Za-z0-9][\w.-]{0,95})\/([A-Za-z0-9][\w.-]{0,95})(?:@([\w.\-/]{1,200}))?$/;

/** True for a 40-hex commit sha (a pinned revision needs no lookup). */
export function isCommitSha(revision: string): boolean {
  return /^[0-9a-f]{40}$/.test(revision);
}

/**
 * Reads `org/name` or `org/name@revision` as a hub reference; undefined for anything else. An existing
 * directory always wins, so a local folder that happens to look like `org/name` keeps loading as a folder.
 */
export function parseHubReference(reference: string): HubReference | undefined {
  const match = REPO_ID.exec(reference);
  if (!match || match[1].endsWith('.') || match[2].endsWith('.') || reference.includes('..')) return undefined;
  if (isDirectory(reference)) return undefined;
  return { repo: `${match[1]}/${match[2]}`, revision: match[3] ?? 'main' };
}

/** `org/name` or `org/name@revision` as a person writes it. */
export function formatReference(reference: HubReference): string {
  return reference.revision === 'main' ? reference.repo : `${reference.repo}@${reference.revision}`;
}

function isDirectory(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}
