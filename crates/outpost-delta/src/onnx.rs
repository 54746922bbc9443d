//! Finds the tensors inside an ONNX file without decoding it: a walk over the protobuf wire
//! format that records where each tensor's data lies (initializers, `Constant` nodes and
//! other tensor attributes, sparse tensors, subgraphs of `If`/`Loop`/`Scan`, functions and
//! training graphs alike) and skips the data itself, so a model of any size is indexed with a
//! few kilobytes of memory. prost's generated types cannot say where a field's bytes are,
//! which is the whole point here.

use std::io::{self, BufRead, Read, Seek};

/// Deepest nesting of messages followed (subgraphs in subgraphs); deeper is refused.
const MAX_DEPTH: u32 = 32;

/// Where one tensor's data lies in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpan {
    /// The tensor's name (empty for unnamed attribute tensors).
    pub name: String,
    /// Offset of the first data byte, from the start of the file.
    pub offset: u64,
    /// Data bytes.
    pub len: u64,
    /// Bytes per element (1 when unknown).
    pub elem: u8,
    /// ONNX `TensorProto.DataType` (0 when absent).
    pub data_type: i32,
    /// The first dimension (output channels of a convolution weight), 0 when absent.
    pub first_dim: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Msg {
    Model,
    Graph,
    Node,
    Attribute,
    Function,
    Training,
    Sparse,
}

/// Bytes per element of an ONNX data type.
pub fn elem_size(data_type: i32) -> u8 {
    match data_type {
        1 | 6 | 12 => 4,       // float, int32, uint32
        4 | 5 | 10 | 16 => 2,  // uint16, int16, float16, bfloat16
        7 | 11 | 13 | 14 => 8, // int64, double, uint64, complex64
        _ => 1,
    }
}

struct Wire<R> {
    r: R,
    pos: u64,
}

impl<R: BufRead + Seek> Wire<R> {
    fn byte(&mut self) -> io::Result<u8> {
        let mut b = [0u8; 1];
        self.r.read_exact(&mut b)?;
        self.pos += 1;
        Ok(b[0])
    }

    fn varint(&mut self) -> io::Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(bad("varint longer than 10 bytes"))
    }

    fn skip(&mut self, n: u64) -> io::Result<()> {
        let n = i64::try_from(n).map_err(|_| bad("field length out of range"))?;
        self.r.seek_relative(n)?;
        self.pos += n as u64;
        Ok(())
    }

    fn bytes(&mut self, n: u64, limit: u64) -> io::Result<Vec<u8>> {
        if n > limit {
            return Err(bad("field longer than expected"));
        }
        let mut v = vec![0u8; n as usize];
        self.r.read_exact(&mut v)?;
        self.pos += n;
        Ok(v)
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("not an ONNX protobuf: {what}"))
}

/// The tensors of the ONNX model that occupies `len` bytes of `r` from its current position
/// `start` (an offset reported in the spans is `start` plus the position within the model).
pub fn tensor_spans<R: Read + Seek>(r: R, start: u64, len: u64) -> io::Result<Vec<TensorSpan>> {
    let mut wire = Wire { r: io::BufReader::with_capacity(8192, r), pos: start };
    let mut out = Vec::new();
    message(&mut wire, Msg::Model, start + len, 0, "", &mut out)?;
    out.sort_by_key(|s| s.offset);
    Ok(out)
}

/// Which fields of `msg` hold which kind of message.
fn child(msg: Msg, field: u64) -> Option<Child> {
    use Child::{Msg as M, Tensor as T};
    Some(match (msg, field) {
        (Msg::Model, 7) => M(Msg::Graph),
        (Msg::Model, 20) => M(Msg::Training),
        (Msg::Model, 25) => M(Msg::Function),
        (Msg::Training, 1 | 2) => M(Msg::Graph),
        (Msg::Graph, 1) => M(Msg::Node),
        (Msg::Graph, 5) => T,
        (Msg::Graph, 15) => M(Msg::Sparse),
        (Msg::Function, 7) => M(Msg::Node),
        (Msg::Node, 5) => M(Msg::Attribute),
        (Msg::Attribute, 5 | 10) => T,
        (Msg::Attribute, 6 | 11) => M(Msg::Graph),
        (Msg::Attribute, 22 | 23) => M(Msg::Sparse),
        (Msg::Sparse, 1 | 2) => T,
        _ => return None,
    })
}

enum Child {
    Msg(Msg),
    Tensor,
}

/// `hint` names the tensors of a node's attributes (a `Constant`'s tensor has no name of its
/// own): the node's first output, which is what identifies it across versions.
fn message<R: BufRead + Seek>(
    w: &mut Wire<R>,
    msg: Msg,
    end: u64,
    depth: u32,
    hint: &str,
    out: &mut Vec<TensorSpan>,
) -> io::Result<()> {
    if depth > MAX_DEPTH {
        return Err(bad("messages nested too deep"));
    }
    let mut node_output: Option<String> = None;
    while w.pos < end {
        let tag = w.varint()?;
        let (field, wire_type) = (tag >> 3, tag & 7);
        match wire_type {
            0 => {
                w.varint()?;
            }
            1 => w.skip(8)?,
            5 => w.skip(4)?,
            2 => {
                let len = w.varint()?;
                let field_end =
                    w.pos.checked_add(len).filter(|e| *e <= end).ok_or_else(|| bad("field runs past its message"))?;
                let hint = node_output.as_deref().unwrap_or(hint);
                match child(msg, field) {
                    Some(Child::Msg(m)) => message(w, m, field_end, depth + 1, hint, out)?,
                    Some(Child::Tensor) => tensor(w, field_end, hint, out)?,
                    // A node's first output (field 2).
                    None if msg == Msg::Node && field == 2 && node_output.is_none() => {
                        node_output = Some(String::from_utf8_lossy(&w.bytes(len, 1 << 16)?).into_owned());
                    }
                    None => w.skip(len)?,
                }
                if w.pos != field_end {
                    return Err(bad("nested message does not end where its length says"));
                }
            }
            _ => return Err(bad("unsupported wire type")),
        }
    }
    if w.pos != end {
        return Err(bad("message runs past its end"));
    }
    Ok(())
}

/// A `TensorProto`: its name, type, first dimension and where `raw_data` (or packed
/// `float_data`/`double_data`) lies.
fn tensor<R: BufRead + Seek>(w: &mut Wire<R>, end: u64, hint: &str, out: &mut Vec<TensorSpan>) -> io::Result<()> {
    let mut span = TensorSpan { name: String::new(), offset: 0, len: 0, elem: 1, data_type: 0, first_dim: 0 };
    let mut first_dim = None;
    let mut data_elem = None;
    while w.pos < end {
        let tag = w.varint()?;
        let (field, wire_type) = (tag >> 3, tag & 7);
        match (field, wire_type) {
            (1, 0) => {
                let d = w.varint()?;
                first_dim.get_or_insert(d);
            }
            (1, 2) => {
                // Packed dims: the first varint is the first dimension.
                let len = w.varint()?;
                let field_end = w.pos + len;
                if len > 0 {
                    let d = w.varint()?;
                    first_dim.get_or_insert(d);
                }
                w.skip(field_end.checked_sub(w.pos).ok_or_else(|| bad("dims overrun"))?)?;
            }
            (2, 0) => span.data_type = w.varint()? as i32,
            (8, 2) => {
                let len = w.varint()?;
                span.name = String::from_utf8_lossy(&w.bytes(len, 1 << 16)?).into_owned();
            }
            (9 | 4 | 10, 2) => {
                let len = w.varint()?;
                span.offset = w.pos;
                span.len = len;
                data_elem = match field {
                    4 => Some(4),
                    10 => Some(8),
                    _ => None,
                };
                w.skip(len)?;
            }
            (_, 0) => {
                w.varint()?;
            }
            (_, 1) => w.skip(8)?,
            (_, 5) => w.skip(4)?,
            (_, 2) => {
                let len = w.varint()?;
                w.skip(len)?;
            }
            _ => return Err(bad("unsupported wire type in a tensor")),
        }
    }
    if w.pos != end {
        return Err(bad("tensor runs past its end"));
    }
    if span.name.is_empty() {
        span.name = hint.to_string();
    }
    span.first_dim = first_dim.unwrap_or(0);
    span.elem = data_elem.unwrap_or_else(|| elem_size(span.data_type));
    if span.len > 0 {
        out.push(span);
    }
    Ok(())
}
