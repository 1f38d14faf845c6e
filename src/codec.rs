//! The codec every generated client and server uses: prost, with smaller buffers.
//!
//! tonic starts each call's encode buffer and decode buffer at 8 KiB. Our messages are a few
//! dozen bytes (a batch of 256 digests is about 17 KiB, and a buffer grows when it must), so a
//! worker with 256 unary calls in flight reserved 4 MiB of buffers that were nearly empty. Most of
//! those pages were never touched: its peak RSS fell by 1.3 MiB (docs/BENCHMARKS.md).

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial size of a call's encode and decode buffers.
const BUFFER_SIZE: usize = 512;

/// tonic's default: a streaming response yields to the runtime after encoding this much.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with [`BUFFER_SIZE`] buffers; set in `build.rs` through `codec_path`.
#[derive(Debug, Clone)]
pub struct SmallCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for SmallCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}
