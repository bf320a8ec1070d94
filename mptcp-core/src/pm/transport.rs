//! Blocking netlink request/response over `netlink_sys::Socket`, shared by
//! the generic-netlink path manager and the rtnetlink side of automatic
//! paths. Message framing and attributes come from the netlink-packet
//! crates; this file only does sequencing, multipart replies and turning
//! NLMSG_ERROR (with its extended-ACK TLVs) into [`Error`].

use std::{fmt::Debug, os::fd::AsRawFd, time::Duration};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkDeserializable, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, NetlinkSerializable, NlasIterator, parse_string, parse_u32,
};
use netlink_sys::{Socket, SocketAddr};

use super::error::{Error, Result};
use crate::sys::pm::{NLM_F_ACK_TLVS, NLM_F_CAPPED, NLMSG_HDRLEN, NLMSGERR_ATTR_MSG};

/// A netlink socket of one protocol, bound in the network namespace of the
/// thread that opened it, with extended ACKs on.
#[derive(Debug)]
pub(crate) struct Transport {
    socket: Socket,
    seq: u32,
}

/// Whether a request expects a single answer or a dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A `do` request: replies (if any) then an ACK.
    Do,
    /// A `dump` request: replies then NLMSG_DONE.
    Dump,
}

impl Transport {
    /// Opens a socket of `protocol` (`NETLINK_GENERIC`, `NETLINK_ROUTE`).
    pub(crate) fn open(protocol: isize) -> Result<Self> {
        let mut socket =
            Socket::new(protocol).map_err(|e| Error::io("cannot open a netlink socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| Error::io("cannot bind a netlink socket", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| Error::io("cannot connect a netlink socket to the kernel", e))?;
        // Both are best effort: without them errors only lose their text.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        Ok(Transport { socket, seq: 0 })
    }

    /// The underlying socket (for group membership and polling).
    pub(crate) fn socket(&self) -> &Socket {
        &self.socket
    }

    /// Sends `payload` with extra header `flags` and collects the replies.
    /// `what` names the request in errors.
    pub(crate) fn request<I>(
        &mut self,
        what: &str,
        payload: I,
        flags: u16,
        kind: Kind,
    ) -> Result<Vec<I>>
    where
        I: NetlinkSerializable + NetlinkDeserializable + Debug,
    {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST
            | flags
            | match kind {
                Kind::Do => NLM_F_ACK,
                Kind::Dump => NLM_F_DUMP,
            };
        header.sequence_number = seq;
        let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
        message.finalize();
        let mut buf = vec![0; message.buffer_len()];
        message.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(|e| Error::io(format!("{what}: cannot send the netlink request"), e))?;

        let mut replies = Vec::new();
        loop {
            let (datagram, _) = self
                .socket
                .recv_from_full()
                .map_err(|e| Error::io(format!("{what}: cannot receive the netlink reply"), e))?;
            for message in split::<I>(&datagram) {
                let message = message?;
                if message.header.sequence_number != seq {
                    continue; // a late answer to an earlier, abandoned request
                }
                match message.payload {
                    NetlinkPayload::InnerMessage(reply) => replies.push(reply),
                    NetlinkPayload::Error(err) => match err.code {
                        None => return Ok(replies),
                        Some(code) => {
                            return Err(Error::Kernel {
                                request: what.to_string(),
                                errno: -code.get(),
                                message: ext_ack_message(message.header.flags, &err.header),
                            });
                        }
                    },
                    NetlinkPayload::Done(done) if done.code < 0 => {
                        return Err(Error::Kernel {
                            request: what.to_string(),
                            errno: -done.code,
                            message: tlv_message(&done.extended_ack),
                        });
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    _ => {}
                }
            }
        }
    }

    /// Waits at most `timeout` for a datagram to read; false on timeout.
    pub(crate) fn wait_readable(&self, timeout: Duration) -> Result<bool> {
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        crate::sys::os::wait_readable(self.socket.as_raw_fd(), ms)
            .map_err(|e| Error::io("cannot wait on a netlink socket", e))
    }

    /// Blocks for the next datagram and decodes the messages in it
    /// (multicast notifications).
    pub(crate) fn receive<I>(&self) -> Result<Vec<NetlinkMessage<I>>>
    where
        I: NetlinkDeserializable,
    {
        let (datagram, _) = self
            .socket
            .recv_from_full()
            .map_err(|e| Error::io("cannot receive netlink notifications", e))?;
        split(&datagram).collect()
    }
}

/// The netlink messages packed in one datagram.
fn split<I: NetlinkDeserializable>(
    datagram: &[u8],
) -> impl Iterator<Item = Result<NetlinkMessage<I>>> + '_ {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        if rest.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = match NetlinkBuffer::new_checked(rest) {
            Ok(buffer) => buffer.length() as usize,
            Err(e) => {
                rest = &[];
                return Some(Err(Error::Decode(e.to_string())));
            }
        };
        let (this, next) = rest.split_at(len.min(rest.len()));
        rest = next.get(align4(len) - len..).unwrap_or(&[]);
        Some(NetlinkMessage::<I>::deserialize(this).map_err(|e| Error::Decode(e.to_string())))
    })
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// The `NLMSGERR_ATTR_MSG` text of an NLMSG_ERROR whose payload after the
/// error code is `after_code`: the echoed request (only its header when
/// `NLM_F_CAPPED`), then the TLVs when `NLM_F_ACK_TLVS`.
fn ext_ack_message(flags: u16, after_code: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 || after_code.len() < NLMSG_HDRLEN {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        parse_u32(&after_code[..4]).ok()? as usize
    };
    tlv_message(after_code.get(align4(echoed)..)?)
}

fn tlv_message(tlvs: &[u8]) -> Option<String> {
    NlasIterator::new(tlvs)
        .filter_map(|nla| nla.ok())
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .and_then(|nla| parse_string(nla.value()).ok())
        .filter(|text| !text.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext_ack_text_after_capped_header() {
        let mut payload = vec![0u8; NLMSG_HDRLEN];
        payload[..4].copy_from_slice(&40u32.to_ne_bytes());
        let text = b"address not found\0";
        let len = 4 + text.len();
        payload.extend_from_slice(&(len as u16).to_ne_bytes());
        payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend_from_slice(text);
        payload.resize(align4(payload.len()), 0);
        assert_eq!(
            ext_ack_message(NLM_F_CAPPED | NLM_F_ACK_TLVS, &payload).as_deref(),
            Some("address not found")
        );
        assert_eq!(ext_ack_message(NLM_F_CAPPED, &payload), None);
    }
}
