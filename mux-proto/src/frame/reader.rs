//! A bounds-checked cursor over a frame payload that names the field it fails on.

use bytes::{Buf, Bytes};

use super::{FrameError, FrameType};

/// Reads fields from a payload without copying; every read is checked.
pub(super) struct Reader {
    buf: Bytes,
    frame_type: FrameType,
}

impl Reader {
    pub(super) fn new(frame_type: FrameType, buf: Bytes) -> Self {
        Reader { buf, frame_type }
    }

    pub(super) fn frame_type(&self) -> FrameType {
        self.frame_type
    }

    pub(super) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn truncated(&self, field: &'static str) -> FrameError {
        FrameError::TruncatedField {
            frame_type: self.frame_type,
            field,
        }
    }

    pub(super) fn u8(&mut self, field: &'static str) -> Result<u8, FrameError> {
        self.buf.try_get_u8().map_err(|_| self.truncated(field))
    }

    pub(super) fn u16(&mut self, field: &'static str) -> Result<u16, FrameError> {
        self.buf.try_get_u16().map_err(|_| self.truncated(field))
    }

    pub(super) fn u32(&mut self, field: &'static str) -> Result<u32, FrameError> {
        self.buf.try_get_u32().map_err(|_| self.truncated(field))
    }

    pub(super) fn u64(&mut self, field: &'static str) -> Result<u64, FrameError> {
        self.buf.try_get_u64().map_err(|_| self.truncated(field))
    }

    /// Splits off `len` bytes, zero-copy.
    pub(super) fn bytes(&mut self, len: usize, field: &'static str) -> Result<Bytes, FrameError> {
        if self.buf.len() < len {
            return Err(self.truncated(field));
        }
        Ok(self.buf.split_to(len))
    }

    /// Everything left, zero-copy.
    pub(super) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Fails if bytes remain after the last field.
    pub(super) fn finish(self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::TrailingBytes {
                frame_type: self.frame_type,
                extra: self.buf.len(),
            })
        }
    }
}
