//! The server's protobuf codec: prost's, except that
//! - a request that does not decode is the client's fault (INVALID_ARGUMENT, SPEC §7's "bad
//!   request"), where prost's codec says INTERNAL;
//! - a `ScoreRequest`'s packed id lists are read by one tight loop over the message's bytes
//!   ([`Decode`]; hand-written because prost's generic path costs ~90 instructions per id,
//!   measured with callgrind, about a quarter of what the engine spends on a public request).

use bytes::Buf;
use prost::encoding::{decode_key, decode_varint, DecodeContext, WireType};
use prost::{DecodeError, Message};
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstDecoder};

use super::pb::{InfoRequest, ScoreRequest};

/// [`ProstCodec`] with [`RequestDecoder`].
pub struct RequestCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for RequestCodec<T, U> {
    fn default() -> Self {
        RequestCodec(ProstCodec::default())
    }
}

impl<T, U> Codec for RequestCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: Decode + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder(self.0.decoder())
    }
}

/// Decodes a request; bytes that are not the message are INVALID_ARGUMENT.
pub struct RequestDecoder<U>(ProstDecoder<U>);

impl<U: Decode> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // The message as one contiguous slice (no copy: the buffer is one `BytesMut`), so the
        // decoders below run over `&[u8]`, not through `DecodeBuf`'s per-byte bookkeeping.
        let message = src.copy_to_bytes(src.remaining());
        U::decode_request(message.as_ref())
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("not a valid protobuf message: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// How a request message is read from its bytes: prost's decoder unless a faster one exists.
pub trait Decode: prost::Message + Default + Sized {
    fn decode_request(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::decode(bytes)
    }
}

impl Decode for InfoRequest {}

/// Same result as prost's decoder (same value, an error where it errs: see the tests), with the
/// packed `long`, `short` and `candidates` read by [`packed_u64`]; every other field (and an
/// unpacked id list, which proto3 parsers must accept too) goes through prost.
impl Decode for ScoreRequest {
    fn decode_request(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut msg = ScoreRequest::default();
        let mut buf = bytes;
        while buf.has_remaining() {
            let (tag, wire_type) = decode_key(&mut buf)?;
            let ids = match tag {
                1 => &mut msg.long,
                2 => &mut msg.short,
                5 => &mut msg.candidates,
                _ => {
                    msg.merge_field(tag, wire_type, &mut buf, DecodeContext::default())?;
                    continue;
                }
            };
            if wire_type != WireType::LengthDelimited {
                msg.merge_field(tag, wire_type, &mut buf, DecodeContext::default())?;
                continue;
            }
            let len = decode_varint(&mut buf)?;
            let Some(len) = usize::try_from(len).ok().filter(|&l| l <= buf.len()) else {
                // A length past the end: prost's own error for it.
                return <ScoreRequest as Message>::decode(bytes);
            };
            let (packed, rest) = buf.split_at(len);
            if packed_u64(packed, ids).is_none() {
                // An invalid varint: prost's own error for it.
                return <ScoreRequest as Message>::decode(bytes);
            }
            buf = rest;
        }
        Ok(msg)
    }
}

/// Appends the varints of a packed `repeated uint64` to `out`, or `None` where one is invalid
/// (truncated, or a 10th byte beyond bit 63: prost's rules). The vector is sized once: one value
/// ends at each byte below 0x80.
fn packed_u64(packed: &[u8], out: &mut Vec<u64>) -> Option<()> {
    out.reserve_exact(packed.iter().map(|&b| usize::from(b < 0x80)).sum());
    let mut i = 0;
    while let Some(&b) = packed.get(i) {
        i += 1;
        if b < 0x80 {
            out.push(u64::from(b));
            continue;
        }
        let (mut value, mut shift) = (u64::from(b & 0x7f), 7u32);
        loop {
            let b = *packed.get(i)?;
            i += 1;
            if shift == 63 && b > 1 {
                return None;
            }
            value |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                break;
            }
            shift += 7;
        }
        out.push(value);
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (the crate's tests use no `rand`).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 11
        }
        fn id(&mut self) -> u64 {
            // Every varint length, 1 to 10 bytes.
            let bits = self.next() % 65;
            if bits == 64 {
                u64::MAX
            } else {
                self.next() & ((1u64 << bits) - 1)
            }
        }
    }

    fn same_as_prost(bytes: &[u8]) {
        let ours = ScoreRequest::decode_request(bytes);
        let prost = <ScoreRequest as Message>::decode(bytes);
        match (&ours, &prost) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            _ => panic!("ours {ours:?} vs prost {prost:?} on {bytes:?}"),
        }
    }

    /// Random messages, their truncations and single-byte corruptions decode exactly as prost
    /// decodes them (same value, or an error on both sides); unpacked ids and repeated fields
    /// (which merge) included.
    #[test]
    fn decodes_as_prost_does() {
        let mut rng = Lcg(7);
        for round in 0..300 {
            let n = |rng: &mut Lcg, max: u64| (rng.next() % max) as usize;
            let msg = ScoreRequest {
                long: (0..n(&mut rng, 20)).map(|_| rng.id()).collect(),
                short: (0..n(&mut rng, 5)).map(|_| rng.id()).collect(),
                fields: (0..n(&mut rng, 3))
                    .map(|i| (format!("f{i}"), rng.id()))
                    .collect(),
                dense: (0..n(&mut rng, 4)).map(|i| i as f32 * 0.5).collect(),
                candidates: (0..n(&mut rng, 200)).map(|_| rng.id()).collect(),
                top_k: rng.next() as u32,
                return_scores: round % 2 == 0,
                return_interests: round % 3 == 0,
            };
            let mut bytes = msg.encode_to_vec();
            assert_eq!(ScoreRequest::decode_request(&bytes).unwrap(), msg);
            // A second copy of the message appended: repeated fields concatenate.
            let twice: Vec<u8> = bytes.iter().chain(bytes.iter()).copied().collect();
            same_as_prost(&twice);
            // Unpacked candidates (field 5 as individual varints) are accepted too.
            let mut unpacked = Vec::new();
            for &c in &msg.candidates {
                prost::encoding::uint64::encode(5, &c, &mut unpacked);
            }
            let decoded = ScoreRequest::decode_request(&unpacked).unwrap();
            assert_eq!(decoded.candidates, msg.candidates);
            same_as_prost(&unpacked);
            for cut in [1, bytes.len() / 2, bytes.len().saturating_sub(1)] {
                same_as_prost(&bytes[..cut.min(bytes.len())]);
            }
            for _ in 0..20 {
                if bytes.is_empty() {
                    break;
                }
                let i = n(&mut rng, bytes.len() as u64);
                let old = bytes[i];
                bytes[i] = rng.next() as u8;
                same_as_prost(&bytes);
                bytes[i] = old;
            }
        }
        // Overlong and over-range varints in a packed list.
        for packed in [
            vec![0xff; 11],
            vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
            vec![0x80],
        ] {
            let mut bytes = vec![(5 << 3) | 2, packed.len() as u8];
            bytes.extend_from_slice(&packed);
            same_as_prost(&bytes);
        }
    }
}
