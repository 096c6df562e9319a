//! Credit in two units, messages and bytes, with checked arithmetic (spec/sessions.md#credit).

/// An amount of credit: whole messages and payload bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Window {
    /// Messages.
    pub messages: u32,
    /// Bytes.
    pub bytes: u32,
}

impl Window {
    /// Nothing.
    pub const ZERO: Window = Window {
        messages: 0,
        bytes: 0,
    };

    /// A window of `messages` and `bytes`.
    pub const fn new(messages: u32, bytes: u32) -> Window {
        Window { messages, bytes }
    }

    /// True when both units are zero.
    pub fn is_zero(self) -> bool {
        self.messages == 0 && self.bytes == 0
    }

    /// `self + other`, or `None` if either unit would pass 2^32−1.
    pub fn checked_add(self, other: Window) -> Option<Window> {
        Some(Window {
            messages: self.messages.checked_add(other.messages)?,
            bytes: self.bytes.checked_add(other.bytes)?,
        })
    }

    /// `self - other`, or `None` if either unit would go below zero.
    pub fn checked_sub(self, other: Window) -> Option<Window> {
        Some(Window {
            messages: self.messages.checked_sub(other.messages)?,
            bytes: self.bytes.checked_sub(other.bytes)?,
        })
    }

    /// Bytes of receive buffer this window can fill, charging `overhead` per message.
    pub fn memory_cost(self, overhead: u32) -> u64 {
        u64::from(self.bytes)
            .saturating_add(u64::from(self.messages).saturating_mul(u64::from(overhead)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_and_underflow_are_refused() {
        let max = Window::new(u32::MAX, u32::MAX);
        assert_eq!(max.checked_add(Window::new(1, 0)), None);
        assert_eq!(max.checked_add(Window::new(0, 1)), None);
        assert_eq!(Window::ZERO.checked_sub(Window::new(0, 1)), None);
        assert_eq!(
            Window::new(3, 10).checked_sub(Window::new(1, 4)),
            Some(Window::new(2, 6))
        );
    }

    #[test]
    fn memory_cost_charges_overhead_per_message() {
        assert_eq!(Window::new(4, 100).memory_cost(64), 356);
        assert_eq!(
            Window::new(u32::MAX, u32::MAX).memory_cost(u32::MAX),
            u64::from(u32::MAX) + u64::from(u32::MAX) * u64::from(u32::MAX)
        );
    }
}
