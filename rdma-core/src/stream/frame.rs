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
}
