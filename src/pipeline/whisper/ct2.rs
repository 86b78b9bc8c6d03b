//! CTranslate2's `model.bin`, the format the Whisper weights ship in on PyPI, read into
//! tensors named as Hugging Face's Whisper names them (what candle-transformers loads).
//! CTranslate2 fuses the attention projections (q, k and v; or k and v for cross-attention),
//! so those are split on the way; nothing is rounded or rescaled.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::whisper::Config;

use super::WhisperError;

/// One stored array: its name, shape, element type and little-endian bytes.
#[derive(Debug)]
pub struct Variable<'a> {
    pub name: String,
    pub dims: Vec<usize>,
    pub dtype: DType,
    pub data: &'a [u8],
}

/// A model file's variables and its aliases (`projection` → `embeddings` for Whisper).
#[derive(Debug)]
pub struct Model<'a> {
    pub spec: String,
    pub variables: Vec<Variable<'a>>,
    pub aliases: Vec<(String, String)>,
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WhisperError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or_else(|| bad("truncated file"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, WhisperError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WhisperError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("two bytes")))
    }
    fn u32(&mut self) -> Result<u32, WhisperError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("four bytes")))
    }
    /// A length-prefixed, NUL-terminated string.
    fn string(&mut self) -> Result<String, WhisperError> {
        let n = self.u16()? as usize;
        let b = self.take(n)?;
        let b = b.strip_suffix(&[0]).unwrap_or(b);
        String::from_utf8(b.to_vec()).map_err(|_| bad("a name is not UTF-8"))
    }
}

fn bad(what: &str) -> WhisperError {
    WhisperError::Format(what.to_string())
}

/// Element types by CTranslate2's numbering.
fn dtype(code: u8) -> Result<DType, WhisperError> {
    Ok(match code {
        0 => DType::F32,
        1 => DType::U8, // int8: read as bytes, only scalars use it in Whisper files
        4 => DType::F16,
        5 => DType::BF16,
        2 | 3 => DType::I64, // int16/int32 scalars; sized below from the byte count
        _ => return Err(WhisperError::Format(format!("unknown element type {code}"))),
    })
}

/// Reads a `model.bin` (format version 4 or later, which stores each variable's type).
pub fn parse(data: &[u8]) -> Result<Model<'_>, WhisperError> {
    let mut r = Reader { data, pos: 0 };
    let version = r.u32()?;
    if !(4..=6).contains(&version) {
        return Err(WhisperError::Format(format!("model.bin format version {version} (4 to 6 are read)")));
    }
    let spec = r.string()?;
    let _revision = r.u32()?;
    let n = r.u32()? as usize;
    let mut variables = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        let name = r.string()?;
        let rank = r.u8()? as usize;
        let dims = (0..rank).map(|_| r.u32().map(|d| d as usize)).collect::<Result<Vec<_>, _>>()?;
        let code = r.u8()?;
        let bytes = r.u32()? as usize;
        let data = r.take(bytes)?;
        let dtype = dtype(code)?;
        let elements: usize = dims.iter().product();
        if rank > 0 && elements.checked_mul(dtype.size_in_bytes()) != Some(bytes) {
            return Err(WhisperError::Format(format!("{name}: {bytes} bytes for shape {dims:?}")));
        }
        variables.push(Variable { name, dims, dtype, data });
    }
    let mut aliases = Vec::new();
    for _ in 0..r.u32()? {
        aliases.push((r.string()?, r.string()?));
    }
    if r.pos != data.len() {
        return Err(bad("bytes after the last alias"));
    }
    Ok(Model { spec, variables, aliases })
}

impl Model<'_> {
    fn get(&self, name: &str) -> Result<&Variable<'_>, WhisperError> {
        self.variables.iter().find(|v| v.name == name).ok_or_else(|| WhisperError::Format(format!("no {name}")))
    }

    fn scalar(&self, name: &str) -> Result<usize, WhisperError> {
        let v = self.get(name)?;
        let mut b = [0u8; 8];
        b[..v.data.len().min(8)].copy_from_slice(&v.data[..v.data.len().min(8)]);
        Ok(u64::from_le_bytes(b) as usize)
    }

    fn layers(&self, prefix: &str) -> usize {
        (0..).take_while(|i| self.variables.iter().any(|v| v.name.starts_with(&format!("{prefix}/layer_{i}/")))).count()
    }

    /// The weights under Hugging Face's names, in their stored type, and the model's shape.
    /// `suppress` is the token list CTranslate2 keeps in its `config.json`.
    pub fn to_whisper(&self, suppress: Vec<u32>) -> Result<(HashMap<String, Tensor>, Config), WhisperError> {
        if self.spec != "WhisperSpec" {
            return Err(WhisperError::Format(format!("a {} model, not Whisper", self.spec)));
        }
        let tensor = |name: &str| -> Result<Tensor, WhisperError> {
            let v = self.get(name)?;
            Ok(Tensor::from_raw_buffer(v.data, v.dtype, &v.dims, &Device::Cpu)?)
        };
        let conv1 = self.get("encoder/conv1/weight")?;
        let embeddings = self.get("decoder/embeddings/weight")?;
        let positions = self.get("decoder/position_encodings/encodings")?;
        let [d_model, mels, _] = conv1.dims[..] else { return Err(bad("conv1 is not 3-d")) };
        let rows = |v: &Variable<'_>| v.dims.first().copied().ok_or_else(|| bad(&format!("{} is a scalar", v.name)));
        let config = Config {
            num_mel_bins: mels,
            max_source_positions: rows(self.get("encoder/position_encodings/encodings")?)?,
            d_model,
            encoder_attention_heads: self.scalar("encoder/num_heads")?,
            encoder_layers: self.layers("encoder"),
            vocab_size: rows(embeddings)?,
            max_target_positions: rows(positions)?,
            decoder_attention_heads: self.scalar("decoder/num_heads")?,
            decoder_layers: self.layers("decoder"),
            suppress_tokens: suppress,
        };
        let mut out = HashMap::new();
        let mut put = |hf: String, t: Tensor| out.insert(hf, t);
        for conv in ["conv1", "conv2"] {
            for p in ["weight", "bias"] {
                put(format!("model.encoder.{conv}.{p}"), tensor(&format!("encoder/{conv}/{p}"))?);
            }
        }
        put("model.decoder.embed_tokens.weight".into(), tensor("decoder/embeddings/weight")?);
        put("model.decoder.embed_positions.weight".into(), tensor("decoder/position_encodings/encodings")?);
        put("model.encoder.embed_positions.weight".into(), tensor("encoder/position_encodings/encodings")?);
        for side in ["encoder", "decoder"] {
            let hf = format!("model.{side}");
            put(format!("{hf}.layer_norm.weight"), tensor(&format!("{side}/layer_norm/gamma"))?);
            put(format!("{hf}.layer_norm.bias"), tensor(&format!("{side}/layer_norm/beta"))?);
            let layers = if side == "encoder" { config.encoder_layers } else { config.decoder_layers };
            for i in 0..layers {
                let ct = format!("{side}/layer_{i}");
                let hf = format!("{hf}.layers.{i}");
                let norm = |ct_norm: &str, hf_norm: &str, put: &mut dyn FnMut(String, Tensor) -> Option<Tensor>| {
                    put(format!("{hf}.{hf_norm}.weight"), tensor(&format!("{ct}/{ct_norm}/gamma"))?);
                    put(format!("{hf}.{hf_norm}.bias"), tensor(&format!("{ct}/{ct_norm}/beta"))?);
                    Ok::<_, WhisperError>(())
                };
                let linear = |ct_lin: &str, hf_lin: &str, put: &mut dyn FnMut(String, Tensor) -> Option<Tensor>| {
                    put(format!("{hf}.{hf_lin}.weight"), tensor(&format!("{ct}/{ct_lin}/weight"))?);
                    put(format!("{hf}.{hf_lin}.bias"), tensor(&format!("{ct}/{ct_lin}/bias"))?);
                    Ok::<_, WhisperError>(())
                };
                // Splits a fused projection into `parts`, in order, along the output rows.
                let split = |ct_lin: &str, parts: &[&str], put: &mut dyn FnMut(String, Tensor) -> Option<Tensor>| {
                    let w = tensor(&format!("{ct}/{ct_lin}/weight"))?;
                    let b = tensor(&format!("{ct}/{ct_lin}/bias"))?;
                    for (j, part) in parts.iter().enumerate() {
                        put(format!("{hf}.{part}.weight"), w.narrow(0, j * d_model, d_model)?.contiguous()?);
                        // Whisper's key projections have no bias (CTranslate2 stores zeros).
                        if !part.ends_with("k_proj") {
                            put(format!("{hf}.{part}.bias"), b.narrow(0, j * d_model, d_model)?.contiguous()?);
                        }
                    }
                    Ok::<_, WhisperError>(())
                };
                norm("self_attention/layer_norm", "self_attn_layer_norm", &mut put)?;
                split(
                    "self_attention/linear_0",
                    &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                    &mut put,
                )?;
                linear("self_attention/linear_1", "self_attn.out_proj", &mut put)?;
                if side == "decoder" {
                    norm("attention/layer_norm", "encoder_attn_layer_norm", &mut put)?;
                    linear("attention/linear_0", "encoder_attn.q_proj", &mut put)?;
                    split("attention/linear_1", &["encoder_attn.k_proj", "encoder_attn.v_proj"], &mut put)?;
                    linear("attention/linear_2", "encoder_attn.out_proj", &mut put)?;
                }
                norm("ffn/layer_norm", "final_layer_norm", &mut put)?;
                linear("ffn/linear_0", "fc1", &mut put)?;
                linear("ffn/linear_1", "fc2", &mut put)?;
            }
        }
        Ok((out, config))
    }
}

/// Converts the CTranslate2 folder `src` (`model.bin`, or its pieces `model.bin.part1`, …
/// as split packages ship it; `config.json`; `vocabulary.txt`) into `out`: `model.safetensors`
/// (same values, Hugging Face names), candle's `config.json`, and the vocabulary.
pub fn convert(src: &Path, out: &Path) -> Result<(), WhisperError> {
    // The whole file, or its pieces in numeric order (`part10` after `part9`).
    let whole = src.join("model.bin");
    let mut pieces: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir(src)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let n = p.file_name()?.to_str()?.strip_prefix("model.bin.part")?.parse().ok()?;
            Some((n, p))
        })
        .collect();
    pieces.sort();
    let pieces: Vec<std::path::PathBuf> =
        if whole.is_file() { vec![whole] } else { pieces.into_iter().map(|(_, p)| p).collect() };
    if pieces.is_empty() {
        return Err(WhisperError::Missing(src.join("model.bin").display().to_string()));
    }
    let mut data = Vec::new();
    for p in &pieces {
        data.extend(std::fs::read(p)?);
    }
    let ct2_config: serde_json::Value = serde_json::from_slice(&std::fs::read(src.join("config.json"))?)
        .map_err(|e| WhisperError::Format(format!("config.json: {e}")))?;
    let suppress = ct2_config["suppress_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_u64().map(|v| v as u32)).collect())
        .unwrap_or_default();
    let (tensors, c) = parse(&data)?.to_whisper(suppress)?;
    std::fs::create_dir_all(out)?;
    let config = serde_json::json!({
        "num_mel_bins": c.num_mel_bins,
        "max_source_positions": c.max_source_positions,
        "d_model": c.d_model,
        "encoder_attention_heads": c.encoder_attention_heads,
        "encoder_layers": c.encoder_layers,
        "vocab_size": c.vocab_size,
        "max_target_positions": c.max_target_positions,
        "decoder_attention_heads": c.decoder_attention_heads,
        "decoder_layers": c.decoder_layers,
        "suppress_tokens": c.suppress_tokens,
    });
    // Written aside and renamed, so a server mapping the old file never sees a torn one.
    let tmp = out.join("model.safetensors.tmp");
    candle_core::safetensors::save(&tensors, &tmp)?;
    std::fs::rename(&tmp, out.join("model.safetensors"))?;
    std::fs::write(out.join("config.json"), serde_json::to_string_pretty(&config).expect("serializes"))?;
    std::fs::copy(src.join("vocabulary.txt"), out.join("vocabulary.txt"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file with the given variables, in CTranslate2's layout (version 6).
    fn file(vars: &[(&str, &[usize], u8, &[u8])]) -> Vec<u8> {
        let mut b = 6u32.to_le_bytes().to_vec();
        let string = |b: &mut Vec<u8>, s: &str| {
            b.extend(((s.len() + 1) as u16).to_le_bytes());
            b.extend(s.as_bytes());
            b.push(0);
        };
        string(&mut b, "WhisperSpec");
        b.extend(3u32.to_le_bytes());
        b.extend((vars.len() as u32).to_le_bytes());
        for (name, dims, code, data) in vars {
            string(&mut b, name);
            b.push(dims.len() as u8);
            dims.iter().for_each(|d| b.extend((*d as u32).to_le_bytes()));
            b.push(*code);
            b.extend((data.len() as u32).to_le_bytes());
            b.extend(*data);
        }
        b.extend(0u32.to_le_bytes());
        b
    }

    #[test]
    fn reads_variables_and_rejects_damage() {
        let f = file(&[("a/w", &[2, 2], 0, &[0; 16]), ("n", &[], 2, &[6, 0])]);
        let m = parse(&f).unwrap();
        assert_eq!(m.variables.len(), 2);
        assert_eq!(m.variables[0].dims, vec![2, 2]);
        assert_eq!(m.scalar("n").unwrap(), 6);
        // Every truncation is an error, never a panic.
        for cut in 0..f.len() {
            assert!(parse(&f[..cut]).is_err(), "cut at {cut}");
        }
        // A shape that does not match its bytes.
        assert!(parse(&file(&[("a/w", &[3, 2], 0, &[0; 16])])).is_err());
        assert!(parse(&file(&[("a/w", &[2], 9, &[0; 2])])).is_err());
    }
}
