//! What a call sends: a 440 Hz tone in 20 ms frames, encoded once per run as opus (libopus,
//! 48 kHz mono, 32 kbit/s) or G.711 µ-law, and looped by every call that uses it.
//!
//! A little deterministic noise (about -60 dBFS) is added to each frame so that no two frames of
//! a loop are equal: the echo is matched to what was sent by payload, and a pure tone repeats
//! every 100 ms (440 Hz × 20 ms = 8.8 cycles, so every fifth frame would be identical).
//! Encoding once and sharing the loop ([`ToneLoop`], behind an `Arc`) keeps a call's own cost to
//! an index: hundreds of calls from one process encode nothing.

/// Frames in a loop: 10 s of audio.
pub const LOOP_FRAMES: usize = 500;

/// A 440 Hz sine with per-sample dither.
struct Tone {
    rate: u32,
    freq: f64,
    n: u64,
    noise: u32,
}

impl Tone {
    fn new(rate: u32, freq: f64) -> Tone {
        Tone { rate, freq, n: 0, noise: 0x9e37_79b9 }
    }

    fn frame(&mut self, samples: usize) -> Vec<i16> {
        (0..samples)
            .map(|_| {
                let t = self.n as f64 / f64::from(self.rate);
                self.n += 1;
                // xorshift32: cheap, deterministic noise, ±32 (about -60 dBFS).
                self.noise ^= self.noise << 13;
                self.noise ^= self.noise >> 17;
                self.noise ^= self.noise << 5;
                let dither = f64::from(self.noise % 65) - 32.0;
                (8000.0 * (2.0 * std::f64::consts::PI * self.freq * t).sin() + dither) as i16
            })
            .collect()
    }
}

/// Encodes one linear sample as G.711 µ-law (ITU-T G.711, bias 0x84).
pub fn ulaw_encode(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    let exponent = (7 - (s as u32).leading_zeros().saturating_sub(17)).min(7) as i32;
    let mantissa = (s >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) | mantissa) as u8
}

/// Decodes a µ-law byte to a linear sample.
pub fn ulaw_decode(byte: u8) -> i16 {
    let b = !byte;
    let exponent = i32::from((b >> 4) & 0x07);
    let mantissa = i32::from(b & 0x0f);
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    (if b & 0x80 != 0 { -magnitude } else { magnitude }) as i16
}

/// One loop of encoded 20 ms frames.
#[derive(Debug, Clone)]
pub struct ToneLoop {
    frames: Vec<Vec<u8>>,
    /// RTP timestamp units per frame (960 for opus at 48 kHz, 160 for G.711 at 8 kHz).
    pub samples_per_frame: u32,
}

impl ToneLoop {
    /// `frames` opus frames: 48 kHz mono, VoIP application, 32 kbit/s.
    pub fn opus(frames: usize) -> Result<ToneLoop, opus::Error> {
        const SAMPLES: usize = 960;
        let mut encoder = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip)?;
        encoder.set_bitrate(opus::Bitrate::Bits(32_000))?;
        let mut tone = Tone::new(48_000, 440.0);
        let frames =
            (0..frames.max(1)).map(|_| encoder.encode_vec(&tone.frame(SAMPLES), 1500)).collect::<Result<_, _>>()?;
        Ok(ToneLoop { frames, samples_per_frame: SAMPLES as u32 })
    }

    /// `frames` G.711 µ-law frames (160 bytes each).
    pub fn ulaw(frames: usize) -> ToneLoop {
        const SAMPLES: usize = 160;
        let mut tone = Tone::new(8_000, 440.0);
        let frames = (0..frames.max(1)).map(|_| tone.frame(SAMPLES).into_iter().map(ulaw_encode).collect()).collect();
        ToneLoop { frames, samples_per_frame: SAMPLES as u32 }
    }

    /// Frame number `n` of an endless repetition of the loop.
    pub fn frame(&self, n: u64) -> &[u8] {
        &self.frames[(n % self.frames.len() as u64) as usize]
    }

    /// Frames in one loop.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Never true (a loop has at least one frame); for clippy.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_matches_g711_reference_points() {
        assert_eq!(ulaw_encode(0), 0xff);
        assert_eq!(ulaw_encode(-1), 0x7f);
        assert_eq!(ulaw_encode(32767), 0x80);
        assert_eq!(ulaw_encode(-32768), 0x00);
        for s in [-30000i16, -1000, -100, 0, 100, 1000, 8000, 30000] {
            let back = ulaw_decode(ulaw_encode(s));
            assert!((i32::from(back) - i32::from(s)).abs() <= i32::from(s).abs() / 16 + 8, "{s} -> {back}");
        }
    }

    #[test]
    fn frames_of_a_loop_are_unique_and_the_loop_repeats() {
        let ulaw = ToneLoop::ulaw(LOOP_FRAMES);
        let unique: std::collections::HashSet<_> = (0..LOOP_FRAMES as u64).map(|n| ulaw.frame(n)).collect();
        assert_eq!(unique.len(), LOOP_FRAMES);
        assert_eq!(ulaw.frame(3), ulaw.frame(LOOP_FRAMES as u64 + 3));
        assert!(ulaw.frame(0).len() == 160);
    }

    #[test]
    fn opus_frames_are_small_and_unique() {
        let opus = ToneLoop::opus(LOOP_FRAMES).unwrap();
        assert_eq!(opus.samples_per_frame, 960);
        let frames: Vec<_> = (0..LOOP_FRAMES as u64).map(|n| opus.frame(n)).collect();
        assert!(frames.iter().all(|f| f.len() > 10 && f.len() < 200));
        let unique: std::collections::HashSet<_> = frames.iter().collect();
        assert_eq!(unique.len(), frames.len());
    }
}
