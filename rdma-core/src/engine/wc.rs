//! Work completion statuses and the kinds of work request, in plain language.

use std::fmt;

/// A work completion status (`enum ibv_wc_status`), with an explanation of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WcStatus(pub u32);

macro_rules! statuses {
    ($($name:ident = $value:literal, $text:literal, $explain:literal, $hint:expr;)*) => {
        impl WcStatus {
            $(#[doc = $explain] pub const $name: WcStatus = WcStatus($value);)*

            /// The verbs name of the status, e.g. `IBV_WC_REM_ACCESS_ERR`.
            pub fn name(self) -> &'static str {
                match self.0 { $($value => $text,)* _ => "IBV_WC_(unknown)" }
            }

            /// What the status means, in one sentence.
            pub fn explain(self) -> &'static str {
                match self.0 { $($value => $explain,)* _ => "the device reported a status this version of anyrdma does not know" }
            }

            /// What to do about it, when there is advice to give.
            pub fn hint(self) -> Option<&'static str> {
                match self.0 { $($value => $hint,)* _ => None }
            }
        }
    };
}

statuses! {
    SUCCESS = 0, "IBV_WC_SUCCESS", "the operation completed successfully", None;
    LOC_LEN_ERR = 1, "IBV_WC_LOC_LEN_ERR",
        "the message did not fit: a received message was longer than the posted receive buffer, or a send was longer than the port allows",
        Some("post receive buffers at least as large as the largest message the peer sends");
    LOC_QP_OP_ERR = 2, "IBV_WC_LOC_QP_OP_ERR",
        "the local queue pair rejected the work request (e.g. inline data above its limit, or an operation its type cannot do)", None;
    LOC_EEC_OP_ERR = 3, "IBV_WC_LOC_EEC_OP_ERR", "local end-to-end context error", None;
    LOC_PROT_ERR = 4, "IBV_WC_LOC_PROT_ERR",
        "local protection error: a local buffer is not inside a memory region registered in this protection domain with the needed access",
        Some("register the buffer in the queue pair's protection domain (anyrdma's owned buffers always are; check buffers from another domain)");
    WR_FLUSH_ERR = 5, "IBV_WC_WR_FLUSH_ERR",
        "the work request was flushed because the queue pair is in the error state", None;
    MW_BIND_ERR = 6, "IBV_WC_MW_BIND_ERR", "memory window bind failed", None;
    BAD_RESP_ERR = 7, "IBV_WC_BAD_RESP_ERR", "the peer sent an unexpected transport response", None;
    LOC_ACCESS_ERR = 8, "IBV_WC_LOC_ACCESS_ERR",
        "local access error: an incoming RDMA operation or atomic result hit a local buffer without the needed access",
        Some("register the local memory with the access flags the operation needs");
    REM_INV_REQ_ERR = 9, "IBV_WC_REM_INV_REQ_ERR",
        "the peer rejected the request as invalid (e.g. a message longer than its receive buffer, or an operation its queue pair does not allow)",
        Some("make the peer's receive buffers as large as the messages sent to it");
    REM_ACCESS_ERR = 10, "IBV_WC_REM_ACCESS_ERR",
        "remote access error: the peer refused the access: wrong rkey, range outside the region, or the region lacks the remote access flag",
        Some("use the RemoteRegion the peer handed out, stay inside it, and register it with the remote access the operation needs (remote read, write or atomic)");
    REM_OP_ERR = 11, "IBV_WC_REM_OP_ERR",
        "the peer could not complete the operation (e.g. its receive buffer was too small or its queue pair failed)", None;
    RETRY_EXC_ERR = 12, "IBV_WC_RETRY_EXC_ERR",
        "the peer did not answer within the transport retry count: it is gone, its queue pair is not connected, or the path is broken",
        Some("check that the peer is alive and connected to this queue pair's endpoint (GID, QP number, PSN)");
    RNR_RETRY_EXC_ERR = 13, "IBV_WC_RNR_RETRY_EXC_ERR",
        "the peer had no receive posted (receiver-not-ready retries exhausted)",
        Some("have the peer post receives before this side sends, or raise rnr_retry in ConnectOptions");
    LOC_RDD_VIOL_ERR = 14, "IBV_WC_LOC_RDD_VIOL_ERR", "local RDD violation", None;
    REM_INV_RD_REQ_ERR = 15, "IBV_WC_REM_INV_RD_REQ_ERR", "the peer rejected an RDMA read request", None;
    REM_ABORT_ERR = 16, "IBV_WC_REM_ABORT_ERR", "the peer aborted the operation", None;
    INV_EECN_ERR = 17, "IBV_WC_INV_EECN_ERR", "invalid end-to-end context number", None;
    INV_EEC_STATE_ERR = 18, "IBV_WC_INV_EEC_STATE_ERR", "invalid end-to-end context state", None;
    FATAL_ERR = 19, "IBV_WC_FATAL_ERR", "fatal device error", Some("the device needs a reset; check dmesg");
    RESP_TIMEOUT_ERR = 20, "IBV_WC_RESP_TIMEOUT_ERR", "the response timed out", None;
    GENERAL_ERR = 21, "IBV_WC_GENERAL_ERR", "general device error", None;
    TM_ERR = 22, "IBV_WC_TM_ERR", "tag matching error", None;
    TM_RNDV_INCOMPLETE = 23, "IBV_WC_TM_RNDV_INCOMPLETE", "tag matching rendezvous incomplete", None;
}

impl fmt::Display for WcStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a work request was, for errors and diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WorkKind {
    /// A send.
    Send,
    /// A send with immediate data.
    SendWithImm,
    /// A posted receive.
    Recv,
    /// An RDMA write.
    Write,
    /// An RDMA write with immediate data.
    WriteWithImm,
    /// An RDMA read.
    Read,
    /// An atomic compare-and-swap.
    CompareSwap,
    /// An atomic fetch-and-add.
    FetchAdd,
    /// A batch of work requests posted together.
    Batch,
}

impl fmt::Display for WorkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WorkKind::Send => "send",
            WorkKind::SendWithImm => "send with immediate",
            WorkKind::Recv => "receive",
            WorkKind::Write => "RDMA write",
            WorkKind::WriteWithImm => "RDMA write with immediate",
            WorkKind::Read => "RDMA read",
            WorkKind::CompareSwap => "atomic compare-and-swap",
            WorkKind::FetchAdd => "atomic fetch-and-add",
            WorkKind::Batch => "batch of work requests",
        })
    }
}
