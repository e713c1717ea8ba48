//! The stream's framing over messenger messages: a message of bytes is data; an empty
//! message with the end-of-stream immediate ends the peer's direction. Everything else a
//! peer sends is a [`FrameProblem`], and the peer is cut off.

/// The immediate that marks the end of a direction ("RDMAEOF" would not fit: `0x454F_4653`
/// is "EOFS" in ASCII, little endian on the wire like every immediate of a messenger).
pub(crate) const END_OF_STREAM: u32 = 0x454F_4653;

/// What a message from the peer is, for the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frame {
    /// Bytes of the stream.
    Data,
    /// The peer will write no more.
    End,
}

/// How a peer broke the stream's framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameProblem {
    /// A data message without bytes (a writer never sends one).
    EmptyData,
    /// An immediate that is not the end of stream's.
    UnknownImmediate(u32),
    /// An end of stream that carries bytes.
    EndWithData {
        /// Bytes it carried.
        len: usize,
    },
    /// A message after the peer's end of stream.
    AfterEnd {
        /// Bytes it carried.
        len: usize,
    },
}

impl std::fmt::Display for FrameProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameProblem::EmptyData => write!(f, "a data message with no bytes"),
            FrameProblem::UnknownImmediate(imm) => {
                write!(
                    f,
                    "a message with immediate {imm:#x}, which the stream does not use"
                )
            }
            FrameProblem::EndWithData { len } => {
                write!(f, "an end of stream carrying {len} bytes")
            }
            FrameProblem::AfterEnd { len } => {
                write!(f, "a message of {len} bytes after the end of stream")
            }
        }
    }
}

/// The reading side of the framing: what each message from the peer is.
#[derive(Debug, Default)]
pub(crate) struct Frames {
    ended: bool,
}

impl Frames {
    /// Classifies the next message from the peer (its immediate and length).
    pub(crate) fn next(&mut self, imm: Option<u32>, len: usize) -> Result<Frame, FrameProblem> {
        if self.ended {
            return Err(FrameProblem::AfterEnd { len });
        }
        match (imm, len) {
            (None, 0) => Err(FrameProblem::EmptyData),
            (None, _) => Ok(Frame::Data),
            (Some(END_OF_STREAM), 0) => {
                self.ended = true;
                Ok(Frame::End)
            }
            (Some(END_OF_STREAM), len) => Err(FrameProblem::EndWithData { len }),
            (Some(imm), _) => Err(FrameProblem::UnknownImmediate(imm)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_then_end_then_nothing() {
        let mut frames = Frames::default();
        assert_eq!(frames.next(None, 5), Ok(Frame::Data));
        assert_eq!(frames.next(Some(END_OF_STREAM), 0), Ok(Frame::End));
        assert_eq!(frames.next(None, 3), Err(FrameProblem::AfterEnd { len: 3 }));
        assert_eq!(
            frames.next(Some(END_OF_STREAM), 0),
            Err(FrameProblem::AfterEnd { len: 0 })
        );
    }

    #[test]
    fn malformed_frames_are_named() {
        let mut frames = Frames::default();
        assert_eq!(frames.next(None, 0), Err(FrameProblem::EmptyData));
        assert_eq!(
            frames.next(Some(7), 1),
            Err(FrameProblem::UnknownImmediate(7))
        );
        assert_eq!(
            frames.next(Some(END_OF_STREAM), 2),
            Err(FrameProblem::EndWithData { len: 2 })
        );
    }

    /// 100,000 random sequences of messages as they come off the wire (header and payload,
    /// mostly well formed, with random immediates, lengths and corruptions), decoded as a
    /// stream's reader does: the messenger's header first, then the framing. None panics; a
    /// message is data exactly when it has bytes and no immediate; the end comes at most
    /// once; after it, and after any error (the reader cuts the peer off there), nothing is
    /// taken as data.
    #[test]
    fn random_wire_messages_are_framed_or_refused() {
        use crate::msg::{Header, Kind, HEADER_LEN};
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut data, mut ends, mut refused) = (0u32, 0u32, 0u32);
        for _ in 0..100_000 {
            let mut frames = Frames::default();
            let mut ended = false;
            for _ in 0..(next() % 8 + 1) {
                let payload = match next() % 4 {
                    0 => 0,
                    _ => (next() % 20) as usize,
                };
                let mut bytes = vec![0u8; HEADER_LEN + payload];
                let imm = match next() % 4 {
                    0 => Some(END_OF_STREAM),
                    1 => Some(next() as u32),
                    _ => None,
                };
                Header {
                    kind: Kind::Data,
                    credits: next() as u16,
                    imm,
                }
                .write(&mut bytes);
                if next() % 8 == 0 {
                    // A corruption anywhere, header included.
                    let at = (next() as usize) % bytes.len();
                    bytes[at] ^= (next() as u8) | 1;
                }
                let Ok(header) = Header::read(&bytes) else {
                    refused += 1;
                    break; // the messenger refuses it: the peer is cut off
                };
                if header.kind != Kind::Data {
                    break; // another kind of message: not the stream's to frame
                }
                let len = bytes.len() - HEADER_LEN;
                match frames.next(header.imm, len) {
                    Ok(Frame::Data) => {
                        assert!(!ended, "data after the end");
                        assert!(header.imm.is_none() && len > 0);
                        data += 1;
                    }
                    Ok(Frame::End) => {
                        assert!(!ended, "a second end");
                        assert_eq!((header.imm, len), (Some(END_OF_STREAM), 0));
                        ended = true;
                        ends += 1;
                    }
                    Err(problem) => {
                        assert!(
                            ended || header.imm.is_some() || len == 0,
                            "well-formed data refused: {problem}"
                        );
                        refused += 1;
                        break;
                    }
                }
            }
        }
        // The generator reaches every outcome.
        assert!(
            data > 10_000 && ends > 1_000 && refused > 10_000,
            "{data} {ends} {refused}"
        );
    }
}
