//! Property tests for the frame codec.
//!
//! - `round_trip`: every valid frame of every type encodes and decodes back to itself.
//! - `batching_is_invariant`: however valid frames are grouped into messages, decoding the
//!   messages yields the same sequence.
//! - `arbitrary_bytes_never_panic`: arbitrary bytes through `Frames` and `Header::parse` never
//!   panic, and whatever decodes re-encodes to bytes that decode to the same frames.
//! - `mutations_and_truncations_fail_cleanly`: every single-byte mutation and every truncation
//!   of a valid message decodes or fails with close code 1002 or 1007.
//! - `header_agrees_with_frame`: `Header::parse` on an encoded frame's first ten bytes gives
//!   the frame's type, flags, session and payload length.
//!
//! The case count is proptest's default, so `PROPTEST_CASES` scales every property.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use bytes::{Bytes, BytesMut};
use mux_proto::frame::{
    decode_message, encode_message, Accept, ConnClose, Credit, Data, Frame, FrameError, FrameType,
    Frames, GoAway, Header, Open, OpenRequest, Permissions, RateLimits, SessionClose, Setting,
    Settings, Text, FLAG_END, FLAG_FIN, HEADER_LEN, MAX_KIND_LEN, MAX_REASON_LEN, MIN_FRAGMENT,
};
use mux_proto::{CloseCode, SessionId};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

// ---------------------------------------------------------------- strategies

/// A session ID for a session frame (never 0), biased towards small IDs.
fn session_id() -> impl Strategy<Value = SessionId> {
    prop_oneof![1u32..=16, 1u32..=u32::MAX, Just(u32::MAX)].prop_map(SessionId)
}

/// A close code that may go on the wire: the named ones often, any valid value sometimes.
fn close_code() -> impl Strategy<Value = CloseCode> {
    let valid: Vec<u16> = (0..=u16::MAX)
        .filter(|v| CloseCode(*v).is_valid_on_wire())
        .collect();
    let named: Vec<u16> = valid
        .iter()
        .copied()
        .filter(|v| CloseCode(*v).name().is_some())
        .collect();
    prop_oneof![select(named), select(valid)].prop_map(CloseCode)
}

/// UTF-8 text of at most `max` bytes: arbitrary characters, or ASCII up to the exact bound.
fn text(max: usize) -> impl Strategy<Value = Text> {
    prop_oneof![
        vec(any::<char>(), 0..=max / 2).prop_map(move |cs| {
            let s: String = cs.into_iter().collect();
            Text::truncated(&s, max)
        }),
        (0..=max).prop_map(move |n| {
            let s: String = (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
            Text::truncated(&s, max)
        }),
    ]
}

fn bytes_up_to(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

/// A valid DATA frame: a message end (any size, with or without FIN), a pure half-close, or a
/// fragment of at least MIN_FRAGMENT bytes.
fn data() -> impl Strategy<Value = Data> {
    let min_fragment = usize::try_from(MIN_FRAGMENT).unwrap();
    prop_oneof![
        4 => (session_id(), any::<bool>(), bytes_up_to(64)).prop_map(|(session_id, fin, payload)| {
            Data { session_id, end: true, fin, payload }
        }),
        1 => session_id().prop_map(|session_id| Data {
            session_id,
            end: false,
            fin: true,
            payload: Bytes::new(),
        }),
        1 => (session_id(), vec(any::<u8>(), min_fragment..=min_fragment + 32)).prop_map(
            |(session_id, payload)| Data {
                session_id,
                end: false,
                fin: false,
                payload: Bytes::from(payload),
            }
        ),
    ]
}

fn open() -> impl Strategy<Value = Open> {
    (
        session_id(),
        any::<(u32, u32, u32)>(),
        text(MAX_KIND_LEN),
        bytes_up_to(300),
    )
        .prop_map(|(session_id, (a, b, c), kind, auth)| Open {
            session_id,
            request: OpenRequest {
                max_message_size: a,
                messages_per_sec: b,
                bytes_per_sec: c,
            },
            kind,
            auth: auth.into(),
        })
}

fn accept() -> impl Strategy<Value = Accept> {
    (
        session_id(),
        0u8..=3,
        prop_oneof![Just(1u32), 1u32..=u32::MAX],
        any::<[u32; 4]>(),
    )
        .prop_map(
            |(session_id, bits, max_message_size, [a, b, c, d])| Accept {
                session_id,
                permissions: Permissions::from_bits(bits).unwrap(),
                max_message_size,
                rate: RateLimits {
                    messages_per_sec: a,
                    bytes_per_sec: b,
                    burst_messages: c,
                    burst_bytes: d,
                },
            },
        )
}

fn credit() -> impl Strategy<Value = Credit> {
    (
        session_id(),
        prop_oneof![
            (1u32..=u32::MAX, Just(0u32)),
            (Just(0u32), 1u32..=u32::MAX),
            (1u32..=u32::MAX, 1u32..=u32::MAX),
        ],
    )
        .prop_map(|(session_id, (messages, bytes))| Credit {
            session_id,
            messages,
            bytes,
        })
}

fn session_close() -> impl Strategy<Value = SessionClose> {
    (
        session_id(),
        close_code(),
        any::<u32>(),
        text(MAX_REASON_LEN),
    )
        .prop_map(|(session_id, code, retry_after_ms, reason)| SessionClose {
            session_id,
            code,
            retry_after_ms,
            reason,
        })
}

/// Any subset of the known settings, each with a value in its range (bounds often).
fn settings() -> impl Strategy<Value = Settings> {
    let values: Vec<_> = Setting::ALL
        .iter()
        .map(|s| {
            let (min, max) = s.valid_range();
            proptest::option::of(prop_oneof![Just(min), Just(max), min..=max])
        })
        .collect();
    values.prop_map(|values| {
        let mut settings = Settings::default();
        for (setting, value) in Setting::ALL.into_iter().zip(values) {
            settings.set(setting, value);
        }
        settings
    })
}

fn go_away() -> impl Strategy<Value = GoAway> {
    (any::<u32>(), close_code(), text(MAX_REASON_LEN)).prop_map(|(last, code, reason)| GoAway {
        last_session_id: SessionId(last),
        code,
        reason,
    })
}

fn conn_close() -> impl Strategy<Value = ConnClose> {
    (close_code(), any::<u32>(), text(MAX_REASON_LEN)).prop_map(|(code, retry_after_ms, reason)| {
        ConnClose {
            code,
            retry_after_ms,
            reason,
        }
    })
}

/// A valid frame of any type.
fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        data().prop_map(Frame::Data),
        open().prop_map(Frame::Open),
        accept().prop_map(Frame::Accept),
        credit().prop_map(Frame::Credit),
        session_close().prop_map(Frame::Close),
        session_close().prop_map(Frame::Reset),
        settings().prop_map(Frame::Settings),
        any::<u64>().prop_map(Frame::Ping),
        any::<u64>().prop_map(Frame::Pong),
        go_away().prop_map(Frame::GoAway),
        conn_close().prop_map(Frame::ConnClose),
    ]
}

/// Bytes that look like frames often enough to reach the payload decoders: plausible headers
/// (right version, any type, few flags, small sessions and lengths) with random payloads.
fn framed_noise() -> impl Strategy<Value = Vec<u8>> {
    let part = (
        0x10u8..=0x1f,
        prop_oneof![Just(0u8), 0u8..=3, any::<u8>()],
        prop_oneof![Just(0u32), 1u32..=4, any::<u32>()],
        vec(any::<u8>(), 0..=40),
        prop_oneof![4 => Just(0i8), 1 => -3i8..=3],
    )
        .prop_map(|(b0, flags, session, payload, skew)| {
            let len = u32::try_from(payload.len()).unwrap();
            let len = len.saturating_add_signed(i32::from(skew));
            let mut out = vec![b0, flags];
            out.extend_from_slice(&session.to_be_bytes());
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&payload);
            out
        });
    vec(part, 1..=4).prop_map(|parts| parts.concat())
}

// ---------------------------------------------------------------- helpers

fn encode_one(frame: &Frame) -> Bytes {
    let mut out = BytesMut::new();
    frame.encode(&mut out);
    out.freeze()
}

/// Decodes `message`, checking the iterator's contract: errors come last and only once.
fn decode_checked(message: Bytes) -> (Vec<Frame>, Option<FrameError>) {
    let mut frames = Vec::new();
    let mut iter = Frames::new(message);
    for item in iter.by_ref() {
        match item {
            Ok(frame) => frames.push(frame),
            Err(e) => {
                assert!(iter.next().is_none(), "Frames continued after {e:?}");
                return (frames, Some(e));
            }
        }
    }
    (frames, None)
}

/// Whatever decodes re-encodes canonically, and the canonical form decodes to the same frames.
fn assert_stable(frames: &[Frame]) {
    if frames.is_empty() {
        return;
    }
    let once = encode_message(frames).freeze();
    let again = decode_message(once.clone()).expect("re-encoded frames decode");
    assert_eq!(again, frames);
    assert_eq!(encode_message(&again).freeze(), once);
}

fn assert_clean_error(error: &FrameError) {
    let code = error.close_code();
    assert!(
        code == CloseCode::PROTOCOL_ERROR || code == CloseCode::INVALID_DATA,
        "{error:?} maps to {code:?}"
    );
}

fn expected_flags(frame: &Frame) -> u8 {
    match frame {
        Frame::Data(d) => (if d.end { FLAG_END } else { 0 }) | (if d.fin { FLAG_FIN } else { 0 }),
        _ => 0,
    }
}

// ---------------------------------------------------------------- properties

proptest! {
    #[test]
    fn round_trip(frame in frame()) {
        let wire = encode_one(&frame);
        prop_assert_eq!(wire.len(), frame.encoded_len());
        let decoded = decode_message(wire.clone());
        prop_assert_eq!(decoded, Ok(vec![frame.clone()]));
        // Encoding is a function of the frame: the same frame always gives the same bytes.
        prop_assert_eq!(encode_one(&frame), wire);
    }

    #[test]
    fn batching_is_invariant(
        frames in vec(frame(), 1..12),
        cuts in vec(any::<bool>(), 12),
    ) {
        // One message holding everything.
        let whole = decode_message(encode_message(&frames).freeze());
        prop_assert_eq!(whole.as_ref(), Ok(&frames));

        // The same frames split into messages at the chosen boundaries.
        let mut decoded = Vec::new();
        let mut group: Vec<Frame> = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            group.push(frame.clone());
            if cuts[i] || i + 1 == frames.len() {
                let message = encode_message(&group).freeze();
                decoded.extend(decode_message(message).unwrap());
                group.clear();
            }
        }
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop_oneof![vec(any::<u8>(), 0..=96), framed_noise()],
    ) {
        let header = Header::parse(&bytes);
        if bytes.len() < HEADER_LEN {
            let is_truncated = matches!(header, Err(FrameError::TruncatedHeader { .. }));
            prop_assert!(is_truncated);
        }
        let (frames, error) = decode_checked(Bytes::from(bytes.clone()));
        if let Some(e) = &error {
            assert_clean_error(e);
        }
        // A valid first header is what the decoder acted on first.
        if let (Ok(h), Some(first)) = (&header, frames.first()) {
            prop_assert_eq!(h.frame_type, first.frame_type());
            prop_assert_eq!(h.session_id, first.session_id());
        }
        if header.is_err() {
            prop_assert!(frames.is_empty());
        }
        assert_stable(&frames);
    }

    #[test]
    fn mutations_and_truncations_fail_cleanly(
        frames in vec(frame(), 1..5),
        xor in 1u8..=255,
    ) {
        let wire = encode_message(&frames).to_vec();
        let mut mutated = wire.clone();
        for i in 0..wire.len() {
            for value in [wire[i] ^ xor, 0x00, 0xff] {
                if value == wire[i] {
                    continue;
                }
                mutated[i] = value;
                let (decoded, error) = decode_checked(Bytes::copy_from_slice(&mutated));
                if let Some(e) = &error {
                    assert_clean_error(e);
                }
                assert_stable(&decoded);
            }
            mutated[i] = wire[i];
        }
        // Where each frame ends: a cut there leaves whole frames, anywhere else an error.
        let ends: Vec<usize> = frames
            .iter()
            .scan(0, |end, f| {
                *end += f.encoded_len();
                Some(*end)
            })
            .collect();
        for len in 0..wire.len() {
            let (decoded, error) = decode_checked(Bytes::copy_from_slice(&wire[..len]));
            prop_assert!(decoded.len() < frames.len());
            prop_assert_eq!(&decoded[..], &frames[..decoded.len()]);
            match ends.iter().position(|end| *end == len) {
                Some(i) => {
                    prop_assert_eq!(error, None);
                    prop_assert_eq!(decoded.len(), i + 1);
                }
                None => {
                    let e = error.expect("a cut inside a frame is an error");
                    if len == 0 {
                        prop_assert_eq!(&e, &FrameError::EmptyMessage);
                    }
                    assert_clean_error(&e);
                }
            }
        }
    }

    #[test]
    fn header_agrees_with_frame(frame in frame()) {
        let wire = encode_one(&frame);
        let header = Header::parse(&wire[..HEADER_LEN]).unwrap();
        let expected = Header {
            frame_type: frame.frame_type(),
            flags: expected_flags(&frame),
            session_id: frame.session_id(),
            len: u32::try_from(wire.len() - HEADER_LEN).unwrap(),
        };
        prop_assert_eq!(header, expected);
        prop_assert_eq!(Header::parse(&wire), Ok(expected));
        prop_assert_eq!(
            frame.frame_type().is_connection_frame(),
            frame.session_id() == SessionId::CONTROL
        );
        prop_assert!(FrameType::ALL.contains(&header.frame_type));
    }
}
