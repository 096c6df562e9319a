// Decoding errors, field for field as spec/vectors/README.md#errors names them.
import type { FrameTypeName } from "./types.js";

export type FrameErrorKind =
  | "EmptyMessage" | "TruncatedHeader" | "UnsupportedVersion" | "UnknownType" | "ReservedFlags"
  | "InvalidFlags" | "WrongSession" | "BadLength" | "TruncatedPayload" | "TruncatedField"
  | "TrailingBytes" | "InvalidUtf8" | "InvalidValue" | "DuplicateSetting";

export interface FrameError {
  kind: FrameErrorKind;
  /** The connection close code the error calls for: 1007 for InvalidUtf8, else 1002. */
  close_code: number;
  frame_type?: FrameTypeName;
  field?: string;
  available?: number;
  version?: number;
  type_nibble?: number;
  flags?: number;
  session_id?: number;
  len?: number;
  min?: number;
  max?: number;
  declared?: number;
  extra?: number;
  value?: number;
  id?: number;
}

export function frameError(kind: FrameErrorKind, fields: Omit<FrameError, "kind" | "close_code"> = {}): FrameError {
  return { kind, ...fields, close_code: kind === "InvalidUtf8" ? 1007 : 1002 };
}

/** Throws the FrameError. */
export const fail = (kind: FrameErrorKind, fields?: Omit<FrameError, "kind" | "close_code">): never => { throw frameError(kind, fields); };

export const isFrameError = (x: unknown): x is FrameError =>
  typeof x === "object" && x !== null && "close_code" in x && "kind" in x;
