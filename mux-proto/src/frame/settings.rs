//! SETTINGS: the limits the sender enforces on what it receives (spec/frames.md#settings).

use bytes::{BufMut, BytesMut};

use super::reader::Reader;
use super::{FrameError, FrameType};

/// Smallest payload a DATA frame that does not end its message may carry.
pub const MIN_FRAGMENT: u32 = 1024;

/// Most entries one SETTINGS frame may carry (known and unknown together).
pub const MAX_SETTINGS: usize = 16;
const ENTRY_LEN: usize = 6;
pub(super) const MAX_SETTINGS_LEN: usize = MAX_SETTINGS * ENTRY_LEN;

/// A known setting identifier. Unknown identifiers are ignored (the extension point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Setting {
    /// Largest DATA payload the sender accepts in one frame: 1,024 ..= 16,777,216.
    MaxFrameSize = 0x1,
    /// Sessions the receiver may have open at once that it opened itself.
    MaxSessions = 0x2,
    /// Messages of credit each new session starts with, for the receiver's sending: ≥ 1.
    InitialCreditMessages = 0x3,
    /// Bytes of credit each new session starts with, for the receiver's sending: ≥ 1,024.
    InitialCreditBytes = 0x4,
    /// Largest message the sender accepts on any session unless a grant says less: ≥ 1.
    MaxMessageSize = 0x5,
    /// Control frames per second the sender accepts before closing with 1008: ≥ 1.
    ControlBudget = 0x6,
    /// Largest kind plus auth, in bytes, the sender accepts in one OPEN.
    MaxOpenMetadata = 0x7,
    /// Milliseconds of silence after which the sender closes the connection (0: none).
    IdleTimeoutMs = 0x8,
}

impl Setting {
    /// Every known setting, in identifier order (the order an encoder writes them).
    pub const ALL: [Setting; 8] = [
        Setting::MaxFrameSize,
        Setting::MaxSessions,
        Setting::InitialCreditMessages,
        Setting::InitialCreditBytes,
        Setting::MaxMessageSize,
        Setting::ControlBudget,
        Setting::MaxOpenMetadata,
        Setting::IdleTimeoutMs,
    ];

    fn from_id(id: u16) -> Option<Setting> {
        Setting::ALL.into_iter().find(|s| *s as u16 == id)
    }

    /// Inclusive range of valid values.
    pub fn valid_range(self) -> (u32, u32) {
        match self {
            Setting::MaxFrameSize => (1024, 16 * 1024 * 1024),
            Setting::MaxMessageSize | Setting::ControlBudget => (1, u32::MAX),
            // spec/frames.md#credit: a window must hold at least one message and one
            // minimum-size fragment, or a sender could never make progress.
            Setting::InitialCreditMessages => (1, u32::MAX),
            Setting::InitialCreditBytes => (MIN_FRAGMENT, u32::MAX),
            _ => (0, u32::MAX),
        }
    }

    /// The name used in spec/frames.md and the vectors.
    pub fn name(self) -> &'static str {
        match self {
            Setting::MaxFrameSize => "max_frame_size",
            Setting::MaxSessions => "max_sessions",
            Setting::InitialCreditMessages => "initial_credit_messages",
            Setting::InitialCreditBytes => "initial_credit_bytes",
            Setting::MaxMessageSize => "max_message_size",
            Setting::ControlBudget => "control_budget",
            Setting::MaxOpenMetadata => "max_open_metadata",
            Setting::IdleTimeoutMs => "idle_timeout_ms",
        }
    }
}

/// The values a SETTINGS frame carried; `None` means absent (the receiver uses the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Settings {
    values: [Option<u32>; Setting::ALL.len()],
}

impl Settings {
    /// The value of `setting`, if present.
    pub fn get(&self, setting: Setting) -> Option<u32> {
        self.values.get(index(setting)).copied().flatten()
    }

    /// Sets `setting` to `value`, or removes it with `None`. Values outside
    /// [`Setting::valid_range`] are clamped into it so the frame always encodes validly.
    pub fn set(&mut self, setting: Setting, value: Option<u32>) {
        let (min, max) = setting.valid_range();
        if let Some(slot) = self.values.get_mut(index(setting)) {
            *slot = value.map(|v| v.clamp(min, max));
        }
    }

    /// Builder form of [`Settings::set`].
    pub fn with(mut self, setting: Setting, value: u32) -> Self {
        self.set(setting, Some(value));
        self
    }

    /// The present settings, in identifier order.
    pub fn iter(&self) -> impl Iterator<Item = (Setting, u32)> + '_ {
        Setting::ALL
            .into_iter()
            .filter_map(|s| self.get(s).map(|v| (s, v)))
    }

    pub(super) fn decode(r: &mut Reader) -> Result<Settings, FrameError> {
        let mut settings = Settings::default();
        // Unknown identifiers are ignored but still may not repeat: remember every ID seen.
        // The header bounded the frame to MAX_SETTINGS entries.
        let mut seen = [0u16; MAX_SETTINGS];
        let mut count = 0usize;
        while !r.is_empty() {
            let id = r.u16("id")?;
            let value = r.u32("value")?;
            if seen.iter().take(count).any(|s| *s == id) {
                return Err(FrameError::DuplicateSetting { id });
            }
            if let Some(slot) = seen.get_mut(count) {
                *slot = id;
            }
            count = count.saturating_add(1);
            if let Some(setting) = Setting::from_id(id) {
                let (min, max) = setting.valid_range();
                if value < min || value > max {
                    return Err(FrameError::InvalidValue {
                        frame_type: FrameType::Settings,
                        field: setting.name(),
                        value: u64::from(value),
                    });
                }
                if let Some(slot) = settings.values.get_mut(index(setting)) {
                    *slot = Some(value);
                }
            }
        }
        Ok(settings)
    }

    pub(super) fn payload_len(&self) -> usize {
        self.iter().count().saturating_mul(ENTRY_LEN)
    }

    pub(super) fn encode_payload(&self, out: &mut BytesMut) {
        for (setting, value) in self.iter() {
            out.put_u16(setting as u16);
            out.put_u32(value);
        }
    }
}

fn index(setting: Setting) -> usize {
    usize::from(setting as u16).saturating_sub(1)
}
