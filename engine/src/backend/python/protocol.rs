//! The binary protocol between TorchServe's front end and its Python worker (`ts/protocol/otf_message_handler.py`
//! in the `torchserve` wheel): big-endian `i32` lengths and codes, a load command `L` and an inference command `I`
//! from the front end, one answer to each from the worker. Pure encoding and decoding, tested on byte buffers.

use std::io::{self, Read};

use crate::backend::handler::{HandlerInput, HandlerOutput};

/// The most bytes one string or body of an answer may announce: a guard against a worker that answers out of
/// protocol, whose garbage would otherwise be taken for a huge length.
const MAX_FIELD: usize = 1 << 30;

/// What the load command carries (`_retrieve_load_msg`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Load<'a> {
    /// The model's name.
    pub(crate) model_name: &'a str,
    /// The unpacked archive's folder (`modelPath`).
    pub(crate) model_path: &'a str,
    /// The model's batch size.
    pub(crate) batch_size: usize,
    /// The manifest's handler (`module.py[:function]`, or a built-in handler's name).
    pub(crate) handler: &'a str,
    /// The GPU the worker runs on, `None` for the CPU (sent as -1).
    pub(crate) gpu: Option<usize>,
    /// The request envelope (`json`, `kserve`, `kservev2`, ...), empty for none.
    pub(crate) envelope: &'a str,
    /// Whether Pillow's image size limit stays on.
    pub(crate) limit_max_image_pixels: bool,
}

fn put_int(out: &mut Vec<u8>, value: i32) {
    out.extend_from_slice(&value.to_be_bytes());
}

/// A length as the protocol's `i32`, saturated (a field of 2 GiB or more cannot be sent anyway: the request body
/// limit is far below).
fn put_len(out: &mut Vec<u8>, len: usize) {
    put_int(out, i32::try_from(len).unwrap_or(i32::MAX));
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// The load command.
pub(crate) fn encode_load(load: &Load<'_>) -> Vec<u8> {
    let mut out = vec![b'L'];
    put_bytes(&mut out, load.model_name.as_bytes());
    put_bytes(&mut out, load.model_path.as_bytes());
    put_len(&mut out, load.batch_size);
    put_bytes(&mut out, load.handler.as_bytes());
    put_int(&mut out, load.gpu.map_or(-1, |g| i32::try_from(g).unwrap_or(i32::MAX)));
    put_bytes(&mut out, load.envelope.as_bytes());
    out.push(u8::from(load.limit_max_image_pixels));
    out
}

/// The inference command for `batch`, request `k` under the id `ids[k]`.
pub(crate) fn encode_inference(batch: &[&HandlerInput], ids: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(inference_len(batch, ids));
    out.push(b'I');
    for (request, id) in batch.iter().zip(ids) {
        put_bytes(&mut out, id.as_bytes());
        for (name, value) in &request.headers {
            put_bytes(&mut out, name.as_bytes());
            put_bytes(&mut out, value.as_bytes());
        }
        put_int(&mut out, -1);
        for part in &request.parts {
            put_bytes(&mut out, part.name.as_bytes());
            put_bytes(&mut out, part.content_type.as_bytes());
            put_bytes(&mut out, &part.value);
        }
        put_int(&mut out, -1);
    }
    put_int(&mut out, -1);
    out
}

/// The length of [`encode_inference`]'s message, so that it is written into one buffer of the right size: a
/// batch of bodies of tens of kilobytes each would otherwise be copied again at every doubling of the buffer.
fn inference_len(batch: &[&HandlerInput], ids: &[String]) -> usize {
    const INT: usize = 4;
    let request = |(request, id): (&&HandlerInput, &String)| {
        let headers: usize = request.headers.iter().map(|(name, value)| 2 * INT + name.len() + value.len()).sum();
        let parts: usize = request
            .parts
            .iter()
            .map(|part| 3 * INT + part.name.len() + part.content_type.len() + part.value.len())
            .sum();
        INT + id.len() + headers + INT + parts + INT
    };
    1 + batch.iter().zip(ids).map(request).sum::<usize>() + INT
}

/// The worker's answer: its status and message, and per request its id and answer (none when the status is
/// not 200 for a load answer; for an inference answer that failed, every request with the batch's status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    /// 200 when the command succeeded.
    pub(crate) code: i32,
    /// The worker's message (`Prediction success`, `Prediction failed`, ...).
    pub(crate) message: String,
    /// Request id and answer, in the worker's order.
    pub(crate) predictions: Vec<(String, HandlerOutput)>,
}

fn bad(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

fn get_int(input: &mut impl Read) -> io::Result<i32> {
    let mut bytes = [0_u8; 4];
    input.read_exact(&mut bytes)?;
    Ok(i32::from_be_bytes(bytes))
}

fn get_bytes(input: &mut impl Read) -> io::Result<Vec<u8>> {
    let len = get_int(input)?;
    bytes_of(input, len)
}

/// The next `len` bytes, `len` having been read.
fn bytes_of(input: &mut impl Read, len: i32) -> io::Result<Vec<u8>> {
    let len = usize::try_from(len).map_err(|_| bad(format!("negative length {len}")))?;
    if len > MAX_FIELD {
        return Err(bad(format!("a field of {len} bytes")));
    }
    let mut bytes = vec![0_u8; len];
    input.read_exact(&mut bytes)?;
    Ok(bytes)
}

fn get_string(input: &mut impl Read) -> io::Result<String> {
    utf8(get_bytes(input)?)
}

fn utf8(bytes: Vec<u8>) -> io::Result<String> {
    String::from_utf8(bytes).map_err(|e| bad(format!("not UTF-8: {e}")))
}

/// Reads one answer (`create_predict_response`, `create_load_model_response`).
///
/// # Errors
/// The reader's error (end of stream when the worker died, a timeout), or [`io::ErrorKind::InvalidData`] for an
/// answer out of protocol.
pub(crate) fn read_answer(input: &mut impl Read) -> io::Result<Answer> {
    let code = get_int(input)?;
    let message = get_string(input)?;
    let mut predictions = Vec::new();
    loop {
        let len = get_int(input)?;
        if len == -1 {
            break;
        }
        let id = utf8(bytes_of(input, len)?)?;
        predictions.push((id, read_prediction(input)?));
    }
    Ok(Answer { code, message, predictions })
}

fn read_prediction(input: &mut impl Read) -> io::Result<HandlerOutput> {
    let content_type = get_string(input)?;
    let status = get_int(input)?;
    let reason = get_string(input)?;
    let count = get_int(input)?;
    let count = usize::try_from(count).map_err(|_| bad(format!("negative header count {count}")))?;
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        headers.push((get_string(input)?, get_string(input)?));
    }
    let body = get_bytes(input)?;
    Ok(HandlerOutput {
        // Out of range is the front end's 500, as TorchServe's.
        status: u16::try_from(status).ok().filter(|s| (100..=599).contains(s)).unwrap_or(500),
        reason,
        content_type: Some(content_type).filter(|c| !c.is_empty()),
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::handler::Part;

    fn int(v: i32) -> Vec<u8> {
        v.to_be_bytes().to_vec()
    }

    fn field(s: &[u8]) -> Vec<u8> {
        [int(i32::try_from(s.len()).expect("small")), s.to_vec()].concat()
    }

    #[test]
    fn the_load_command_is_the_frame_the_worker_reads() {
        let load = Load {
            model_name: "m",
            model_path: "/x",
            batch_size: 4,
            handler: "h.py",
            gpu: None,
            envelope: "",
            limit_max_image_pixels: true,
        };
        let want = [b"L".to_vec(), field(b"m"), field(b"/x"), int(4), field(b"h.py"), int(-1), field(b""), vec![1]];
        assert_eq!(encode_load(&load), want.concat());
        let on_gpu = encode_load(&Load { gpu: Some(2), limit_max_image_pixels: false, ..load });
        assert_eq!(&on_gpu[on_gpu.len() - 9..on_gpu.len() - 5], &int(2)[..]);
        assert_eq!(on_gpu.last(), Some(&0));
    }

    #[test]
    fn the_inference_command_carries_headers_and_parts_per_request() {
        let a = HandlerInput {
            headers: vec![("h".into(), "v".into())],
            parts: vec![Part { name: "body".into(), content_type: "application/json".into(), value: b"[1]".to_vec() }],
        };
        let b = HandlerInput::default();
        let got = encode_inference(&[&a, &b], &["1".into(), "2".into()]);
        let want = [
            b"I".to_vec(),
            field(b"1"),
            field(b"h"),
            field(b"v"),
            int(-1),
            field(b"body"),
            field(b"application/json"),
            field(b"[1]"),
            int(-1),
            field(b"2"),
            int(-1),
            int(-1),
            int(-1),
        ];
        assert_eq!(got, want.concat());
        assert_eq!(inference_len(&[&a, &b], &["1".into(), "2".into()]), got.len(), "sized before it is written");
    }

    #[test]
    fn an_answer_gives_each_request_its_status_type_headers_and_body() {
        let answer = [
            int(200),
            field(b"Prediction success"),
            field(b"1"),
            field(b"application/json"),
            int(200),
            field(b""),
            int(1),
            field(b"x-k"),
            field(b"v"),
            field(b"{}"),
            field(b"2"),
            int(0),
            int(422),
            field(b"bad"),
            int(0),
            field(b"no"),
            int(-1),
        ]
        .concat();
        let got = read_answer(&mut answer.as_slice()).expect("in protocol");
        assert_eq!(got.code, 200);
        assert_eq!(got.message, "Prediction success");
        let (first, second) = (&got.predictions[0], &got.predictions[1]);
        assert_eq!(first.0, "1");
        assert_eq!(first.1.content_type.as_deref(), Some("application/json"));
        assert_eq!(first.1.headers, vec![("x-k".to_string(), "v".to_string())]);
        assert_eq!(first.1.body, b"{}");
        assert_eq!((second.0.as_str(), second.1.status, second.1.reason.as_str()), ("2", 422, "bad"));
        assert_eq!(second.1.content_type, None);
    }

    #[test]
    fn a_truncated_or_garbled_answer_is_an_error_not_a_panic() {
        let whole =
            [int(200), field(b"ok"), field(b"1"), int(0), int(200), int(0), int(0), field(b"x"), int(-1)].concat();
        for cut in 0..whole.len() {
            assert!(read_answer(&mut &whole[..cut]).is_err(), "cut at {cut}");
        }
        let huge = [int(200), int(i32::MAX)].concat();
        assert_eq!(read_answer(&mut huge.as_slice()).expect_err("huge").kind(), io::ErrorKind::InvalidData);
        let load = [int(500), field(b"Unknown exception"), int(-1)].concat();
        let failed = read_answer(&mut load.as_slice()).expect("a load answer");
        assert_eq!((failed.code, failed.message.as_str(), failed.predictions.len()), (500, "Unknown exception", 0));
    }
}
