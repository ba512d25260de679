//! Streaming readers for the input formats of `json2parquet` and the HTTP batch endpoint:
//! JSON Lines, a JSON array of records, and the seed's `{"logs": [...]}` document.
//! Memory stays bounded: records are handed to a sink in batches as they are read.

use std::cell::{Cell, RefCell};
use std::io::BufRead;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::config::RecordType;
use crate::error::{Error, Result};
use crate::record::{Log, LogRef, decode::truncate, decode_json_as};

/// The shape of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    JsonLines,
    /// A JSON array of objects.
    Array,
    /// The seed's `{"logs": [ ... ]}` document.
    LogsDocument,
}

/// Input that could not become a record: where it was, why, and the text itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// `line 12 of logs.jsonl`, `element 3 of logs.json`.
    pub what: String,
    /// Why.
    pub reason: String,
    /// The original text (cut to 1 MiB).
    pub raw: String,
}

/// Totals of one input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Records decoded.
    pub records: u64,
    /// Inputs rejected.
    pub rejected: u64,
    /// Bytes read.
    pub bytes: u64,
}

const MAX_RAW: usize = 1 << 20;

/// Looks at the first bytes (without consuming them, apart from a UTF-8 BOM) to tell the
/// format.
pub fn detect<R: BufRead>(reader: &mut R) -> Result<Format> {
    let buf = reader
        .fill_buf()
        .map_err(|e| Error::io("reading input", "", e))?;
    if buf.starts_with(&[0xEF, 0xBB, 0xBF]) {
        reader.consume(3);
    }
    let buf = reader
        .fill_buf()
        .map_err(|e| Error::io("reading input", "", e))?;
    let text = &buf[..buf.len().min(256)];
    let mut it = text.iter().copied().skip_while(u8::is_ascii_whitespace);
    match it.next() {
        Some(b'[') => Ok(Format::Array),
        Some(b'{') => {
            let rest: Vec<u8> = it.skip_while(u8::is_ascii_whitespace).collect();
            let is_doc = rest.starts_with(b"\"logs\"") && {
                let after: Vec<u8> = rest[6..]
                    .iter()
                    .copied()
                    .skip_while(u8::is_ascii_whitespace)
                    .collect();
                after.starts_with(b":")
                    && after[1..]
                        .iter()
                        .copied()
                        .find(|b| !b.is_ascii_whitespace())
                        == Some(b'[')
            };
            Ok(if is_doc {
                Format::LogsDocument
            } else {
                Format::JsonLines
            })
        }
        _ => Ok(Format::JsonLines),
    }
}

/// Reads an input of any format, calling `sink` with batches of up to `batch` records and
/// the inputs rejected meanwhile. A sink error stops the read and is returned.
pub fn read_input<R: BufRead>(
    mut reader: R,
    name: &str,
    kind: RecordType,
    batch: usize,
    sink: &mut dyn FnMut(Vec<Log>, Vec<Rejected>) -> Result<()>,
) -> Result<ReadStats> {
    match detect(&mut reader)? {
        Format::JsonLines => read_json_lines(reader, name, kind, batch, sink),
        format => read_document(reader, name, kind, format, batch, sink),
    }
}

/// Reads JSON Lines; a broken line is rejected with its line number, the rest go on.
pub fn read_json_lines<R: BufRead>(
    mut reader: R,
    name: &str,
    kind: RecordType,
    batch: usize,
    sink: &mut dyn FnMut(Vec<Log>, Vec<Rejected>) -> Result<()>,
) -> Result<ReadStats> {
    let mut stats = ReadStats::default();
    let mut line_no = 0u64;
    while let Some(block) = read_block(&mut reader, name, batch, &mut line_no)? {
        stats.bytes += block.data.len() as u64;
        let (records, rejected) = decode_json_lines(&block.data, block.first_line, name, kind);
        stats.records += records.len() as u64;
        stats.rejected += rejected.len() as u64;
        if !records.is_empty() || !rejected.is_empty() {
            sink(
                records.into_iter().map(LogRef::into_owned).collect(),
                rejected,
            )?;
        }
    }
    Ok(stats)
}

/// Whole lines of a JSON Lines input, read as one unit of work.
struct Block {
    /// The lines, each with its `\n` (the last one may lack it).
    data: Vec<u8>,
    /// Line number of the first line (1-based).
    first_line: u64,
}

/// Bytes after which a block ends even with fewer than `batch` lines (bounds memory with
/// very long lines).
const BLOCK_BYTES: usize = 4 << 20;

/// Reads up to `batch` lines (or about [`BLOCK_BYTES`]); `None` at the end of the input.
/// Whole buffers of the reader are copied at once, lines found with `memchr`.
fn read_block<R: BufRead>(
    reader: &mut R,
    name: &str,
    batch: usize,
    line_no: &mut u64,
) -> Result<Option<Block>> {
    let io = |e| Error::io("reading input", name, e);
    let first_line = *line_no + 1;
    let batch = batch.max(1);
    // About 1.5 KB a line, enough for typical log records without regrowing, but no more
    // than twice what the reader holds now (a small request body gets a small block).
    let buffered = reader.fill_buf().map_err(io)?.len();
    let capacity = (batch * 1536)
        .min(BLOCK_BYTES)
        .min(buffered.max(32 * 1024) * 2);
    let mut data = Vec::with_capacity(capacity);
    let mut lines = 0;
    loop {
        let buf = reader.fill_buf().map_err(io)?;
        if buf.is_empty() {
            // The input ends without a newline: its last line counts too.
            if data.last().is_some_and(|&b| b != b'\n') {
                lines += 1;
            }
            break;
        }
        // Past BLOCK_BYTES the block ends at the next line end.
        let wanted = if data.len() >= BLOCK_BYTES {
            1
        } else {
            batch - lines
        };
        let mut take = buf.len();
        let mut found = 0;
        for pos in memchr::memchr_iter(b'\n', buf) {
            found += 1;
            if found == wanted {
                take = pos + 1;
                break;
            }
        }
        data.extend_from_slice(&buf[..take]);
        reader.consume(take);
        lines += found.min(wanted);
        if found >= wanted && (lines == batch || data.len() >= BLOCK_BYTES) {
            break;
        }
    }
    *line_no += lines as u64;
    Ok((!data.is_empty()).then_some(Block { data, first_line }))
}

/// The lines of `data` (split at `\n`, as `split` does: a last line without one counts,
/// and a trailing `\n` leaves an empty last line), found with SIMD `memchr`: a byte-by-byte
/// `split` was 5% of json2parquet's CPU.
fn lines_of(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    let mut ends = memchr::memchr_iter(b'\n', data);
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let line = match ends.next() {
            Some(end) => &data[start..end],
            None => {
                done = true;
                &data[start..]
            }
        };
        start += line.len() + 1;
        Some(line)
    })
}

/// Decodes every line of JSON Lines `data` (whose first line is number `first_line` of
/// `name`): records borrowing their text from `data`, and the lines rejected with their
/// numbers.
pub fn decode_json_lines<'a>(
    data: &'a [u8],
    first_line: u64,
    name: &str,
    kind: RecordType,
) -> (Vec<LogRef<'a>>, Vec<Rejected>) {
    let mut records = Vec::with_capacity(1024);
    let mut rejected = Vec::new();
    for (i, line) in lines_of(data).enumerate() {
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() {
            continue;
        }
        let line_no = first_line + i as u64;
        match decode_json_as(trimmed, kind, || format!("line {line_no} of {name}")) {
            Ok(log) => records.push(log),
            Err(e) => rejected.push(reject(e, trimmed)),
        }
    }
    (records, rejected)
}

/// Cuts JSON Lines `data` into slices of `lines` lines (each ends after a newline but the
/// last), with the number of each slice's first line (from 1); also returns the number of
/// lines in all. For [`decode_json_lines`] one slice at a time.
pub fn line_slices(data: &[u8], lines: usize) -> (Vec<(&[u8], u64)>, usize) {
    let lines = lines.max(1);
    let mut slices = Vec::new();
    let (mut start, mut count) = (0, 0);
    for end in memchr::memchr_iter(b'\n', data) {
        count += 1;
        if count % lines == 0 {
            slices.push((&data[start..=end], (count - lines + 1) as u64));
            start = end + 1;
        }
    }
    if start < data.len() {
        slices.push((&data[start..], (count / lines * lines + 1) as u64));
        if data.last() != Some(&b'\n') {
            count += 1;
        }
    }
    (slices, count)
}

/// The turn of one block of [`read_input_parallel`]: blocks push in input order.
///
/// A block whose turn has not come yet does not just wait for it: its thread first takes
/// the next block, decodes and prepares that one too, and only then pushes both, each in
/// its turn (see [`Turn::push`]). Waiting outright left a core idle whenever the block
/// before was on a thread the scheduler had set aside for a flusher.
pub struct Turn<'t> {
    seq: u64,
    /// `None` when reading on one thread: every push is in order already.
    pipeline: Option<&'t dyn Ahead>,
    /// For a block taken ahead: the push of the block before it on this thread, which
    /// must go first (and pass its own turn on).
    before: Cell<Option<&'t mut dyn FnMut()>>,
    /// Whether this block was itself taken ahead (it then takes no other).
    taken_ahead: bool,
    /// Whether this block's turn was passed on.
    passed: Cell<bool>,
}

/// What a [`Turn`] needs of the pipeline it belongs to.
trait Ahead: Sync {
    /// Which block's turn it is.
    fn order(&self) -> &Order;
    /// Whether block `seq` is not to be pushed: an earlier block failed.
    fn stops_before(&self, seq: u64) -> bool;
    /// Block `seq`'s push failed: no later block is pushed (its error reaches the reader
    /// through `process`' result).
    fn stop_after(&self, seq: u64);
    /// The next block, when one is ready now.
    fn take_ready(&self) -> Option<(u64, Block)>;
    /// Decodes and processes a block taken ahead, with the push that goes before it.
    fn run(&self, seq: u64, block: &Block, before: &mut dyn FnMut());
}

/// Which block's turn it is.
#[derive(Default)]
struct Order {
    next: parking_lot::Mutex<u64>,
    turned: parking_lot::Condvar,
}

impl Turn<'_> {
    /// Runs `push` in this block's turn, after every earlier block's push, then passes
    /// the turn on; returns what `push` returned. Call it once, after the work that can
    /// be done out of order. When an earlier block failed, `push` is not run (the read
    /// stops) and this returns [`Error::Closed`]; when `push` fails, no later block is
    /// pushed.
    pub fn push(&self, push: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        if self.passed.get() {
            return Err(Error::Buffer(
                "a block was pushed twice (internal error)".into(),
            ));
        }
        if let Some(p) = self.pipeline
            && !self.is_turn(p)
            && let Some((seq, block)) = self.take_ahead(p)
        {
            let mut outcome = None;
            let mut mine = || outcome = Some(self.in_turn(p, &mut *push));
            p.run(seq, &block, &mut mine);
            // `run` always runs `mine` (see `Turn::finish`), so `outcome` is set.
            return outcome.unwrap_or(Err(Error::Closed));
        }
        match self.pipeline {
            Some(p) => self.in_turn(p, push),
            None => push(),
        }
    }

    /// Whether it is this block's turn now.
    fn is_turn(&self, p: &dyn Ahead) -> bool {
        *p.order().next.lock() == self.seq
    }

    /// The next block, unless this block was itself taken ahead (one at a time, which
    /// bounds the blocks in flight: two per thread, and those in the channel).
    fn take_ahead(&self, p: &dyn Ahead) -> Option<(u64, Block)> {
        if self.taken_ahead {
            None
        } else {
            p.take_ready()
        }
    }

    /// Runs the push that goes before this block (if not yet), waits for this turn, runs
    /// `push` unless the read is stopping, and passes the turn on.
    fn in_turn(&self, p: &dyn Ahead, push: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        self.wait(p);
        let outcome = if p.stops_before(self.seq) {
            Err(Error::Closed)
        } else {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(push))
                .unwrap_or_else(|_| Err(Error::Buffer("a push panicked".into())))
        };
        // Before the turn is passed on: the next block must not push after this one failed.
        if outcome.is_err() {
            p.stop_after(self.seq);
        }
        self.pass(p);
        outcome
    }

    /// Passes this block's turn on if its push did not (the push that goes before it
    /// first), so later blocks never wait forever.
    fn finish(&self, p: &dyn Ahead) {
        if !self.passed.get() {
            self.wait(p);
            self.pass(p);
        }
    }

    /// Runs the push that goes before this block (if not yet), then waits for this turn.
    fn wait(&self, p: &dyn Ahead) {
        if let Some(before) = self.before.take() {
            before();
        }
        let order = p.order();
        let mut next = order.next.lock();
        while *next != self.seq {
            order.turned.wait(&mut next);
        }
    }

    fn pass(&self, p: &dyn Ahead) {
        let order = p.order();
        *order.next.lock() += 1;
        order.turned.notify_all();
        self.passed.set(true);
    }
}

/// The shared state of [`read_input_parallel`]'s decoding threads.
struct Pipeline<'s, P> {
    jobs: parking_lot::Mutex<std::sync::mpsc::Receiver<(u64, Block)>>,
    order: Order,
    /// The first block that failed (`u64::MAX`: none), and its error: the blocks after
    /// it are not pushed, the blocks before it are.
    failed_at: AtomicU64,
    first_error: parking_lot::Mutex<Option<(u64, Error)>>,
    records: AtomicU64,
    rejected: AtomicU64,
    process: &'s P,
    name: &'s str,
    kind: RecordType,
}

impl<P> Pipeline<'_, P>
where
    P: for<'b> Fn(Vec<LogRef<'b>>, Vec<Rejected>, &Turn<'_>) -> Result<()> + Sync,
{
    /// A decoding thread: blocks from the channel until it closes.
    fn work(&self) {
        loop {
            let job = self.jobs.lock().recv();
            let Ok((seq, block)) = job else { break };
            self.block(seq, &block, None);
        }
    }

    /// Decodes a block and processes it; whatever happens, the push `before` it (if any)
    /// is run and the block's turn is passed on, so later blocks never wait forever.
    fn block<'a>(&'a self, seq: u64, block: &Block, before: Option<&'a mut (dyn FnMut() + 'a)>) {
        let turn = Turn {
            seq,
            pipeline: Some(self),
            taken_ahead: before.is_some(),
            before: Cell::new(before),
            passed: Cell::new(false),
        };
        if !self.stops_before(seq) {
            let run = std::panic::AssertUnwindSafe(|| {
                let (logs, bad) =
                    decode_json_lines(&block.data, block.first_line, self.name, self.kind);
                let counts = (logs.len() as u64, bad.len() as u64);
                if counts == (0, 0) {
                    return Ok(counts);
                }
                (self.process)(logs, bad, &turn).map(|()| counts)
            });
            let outcome = std::panic::catch_unwind(run).unwrap_or_else(|_| {
                Err(Error::Buffer(format!(
                    "processing lines {}.. of {} panicked",
                    block.first_line, self.name
                )))
            });
            match outcome {
                Ok((r, j)) => {
                    self.records.fetch_add(r, Ordering::Relaxed);
                    self.rejected.fetch_add(j, Ordering::Relaxed);
                }
                Err(e) => self.fail(seq, e),
            }
        }
        turn.finish(self);
    }

    /// Records the error of block `seq`: the read stops, and the error returned is that
    /// of the earliest block that failed.
    fn fail(&self, seq: u64, e: Error) {
        let mut first = self.first_error.lock();
        if first.as_ref().is_none_or(|(at, _)| seq < *at) {
            *first = Some((seq, e));
        }
        self.stop_after(seq);
    }

    fn failed(&self) -> bool {
        self.failed_at.load(Ordering::Acquire) != u64::MAX
    }
}

impl<P> Ahead for Pipeline<'_, P>
where
    P: for<'b> Fn(Vec<LogRef<'b>>, Vec<Rejected>, &Turn<'_>) -> Result<()> + Sync,
{
    fn order(&self) -> &Order {
        &self.order
    }

    fn stops_before(&self, seq: u64) -> bool {
        self.failed_at.load(Ordering::Acquire) < seq
    }

    fn stop_after(&self, seq: u64) {
        self.failed_at.fetch_min(seq, Ordering::AcqRel);
    }

    fn take_ready(&self) -> Option<(u64, Block)> {
        self.jobs.try_lock()?.try_recv().ok()
    }

    fn run(&self, seq: u64, block: &Block, before: &mut dyn FnMut()) {
        self.block(seq, block, Some(before));
    }
}

/// Like [`read_input`], but JSON Lines are decoded by `threads` threads in parallel, each
/// block of lines then handed to `process` on the thread that decoded it, with its records
/// borrowing their text from the block. `process` does what it can in parallel (for
/// json2parquet: grouping by key, sizes, encoding), then hands what must happen in input
/// order (the push: records of a key keep their order) to [`Turn::push`]. At most
/// `3 * threads` blocks are in flight, so memory stays bounded. The first error stops the
/// read (no later push runs) and is returned. Other formats, and `threads <= 1`, are read
/// by [`read_input`] on this thread.
pub fn read_input_parallel<R, P>(
    mut reader: R,
    name: &str,
    kind: RecordType,
    batch: usize,
    threads: usize,
    process: &P,
) -> Result<ReadStats>
where
    R: BufRead + Send,
    P: for<'b> Fn(Vec<LogRef<'b>>, Vec<Rejected>, &Turn<'_>) -> Result<()> + Sync,
{
    if threads <= 1 || detect(&mut reader)? != Format::JsonLines {
        return read_input(reader, name, kind, batch, &mut |records, rejected| {
            let turn = Turn {
                seq: 0,
                pipeline: None,
                before: Cell::new(None),
                taken_ahead: false,
                passed: Cell::new(false),
            };
            process(records.iter().map(Log::borrowed).collect(), rejected, &turn)
        });
    }
    let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<(u64, Block)>(threads);
    let pipeline = Pipeline {
        jobs: parking_lot::Mutex::new(job_rx),
        order: Order::default(),
        failed_at: AtomicU64::new(u64::MAX),
        first_error: parking_lot::Mutex::new(None),
        records: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        process,
        name,
        kind,
    };
    let read = std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| pipeline.work());
        }
        let mut bytes = 0;
        let mut line_no = 0;
        let mut seq = 0;
        let read = loop {
            if pipeline.failed() {
                break Ok(());
            }
            match read_block(&mut reader, name, batch, &mut line_no) {
                Ok(Some(block)) => {
                    bytes += block.data.len() as u64;
                    if job_tx.send((seq, block)).is_err() {
                        break Ok(());
                    }
                    seq += 1;
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        // The workers finish what was sent, then see the channel closed.
        drop(job_tx);
        read.map(|()| bytes)
    });
    let stopped = pipeline.failed();
    read.and_then(|bytes| match pipeline.first_error.into_inner() {
        Some((_, e)) => Err(e),
        // A push failed and `process` did not return its error.
        None if stopped => Err(Error::Buffer(format!(
            "a push of {name} failed and the read stopped (its error was not returned)"
        ))),
        None => Ok(ReadStats {
            records: pipeline.records.into_inner(),
            rejected: pipeline.rejected.into_inner(),
            bytes,
        }),
    })
}

fn reject(e: Error, raw: &[u8]) -> Rejected {
    let (what, reason) = match e {
        Error::Decode { what, reason } => (what, reason),
        other => (String::new(), other.to_string()),
    };
    Rejected {
        what,
        reason,
        raw: truncate(&String::from_utf8_lossy(raw), MAX_RAW),
    }
}

struct Ctx<'s> {
    name: String,
    kind: RecordType,
    batch: usize,
    records: Vec<Log>,
    rejected: Vec<Rejected>,
    stats: ReadStats,
    index: u64,
    sink: &'s mut dyn FnMut(Vec<Log>, Vec<Rejected>) -> Result<()>,
    error: Option<Error>,
}

impl Ctx<'_> {
    fn element(&mut self, raw: &RawValue) -> std::result::Result<(), String> {
        self.index += 1;
        let what = || format!("element {} of {}", self.index, self.name);
        match decode_json_as(raw.get().as_bytes(), self.kind, what) {
            Ok(log) => {
                self.records.push(log);
                self.stats.records += 1;
            }
            Err(e) => {
                self.stats.rejected += 1;
                self.rejected.push(reject(e, raw.get().as_bytes()));
            }
        }
        if self.records.len() >= self.batch {
            self.emit()?;
        }
        Ok(())
    }

    fn emit(&mut self) -> std::result::Result<(), String> {
        let records = std::mem::take(&mut self.records);
        let rejected = std::mem::take(&mut self.rejected);
        if records.is_empty() && rejected.is_empty() {
            return Ok(());
        }
        (self.sink)(records, rejected).map_err(|e| {
            let msg = e.to_string();
            self.error = Some(e);
            msg
        })
    }
}

struct ArraySeed<'a, 's>(&'a RefCell<Ctx<'s>>);

impl<'de> DeserializeSeed<'de> for ArraySeed<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ArraySeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of log records")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        while let Some(raw) = seq.next_element::<Box<RawValue>>()? {
            self.0
                .borrow_mut()
                .element(&raw)
                .map_err(de::Error::custom)?;
        }
        Ok(())
    }
}

struct DocSeed<'a, 's>(&'a RefCell<Ctx<'s>>);

impl<'de> Visitor<'de> for DocSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object with a \"logs\" array")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == "logs" {
                map.next_value_seed(ArraySeed(self.0))?;
            } else {
                log::warn!("input document: key `{key}` is not `logs`; ignored");
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// Reads a JSON array or a `{"logs": [...]}` document element by element. A broken
/// element that leaves the document unreadable stops the read with an error naming its
/// position; everything read before it has been handed to the sink.
pub fn read_document<R: BufRead>(
    reader: R,
    name: &str,
    kind: RecordType,
    format: Format,
    batch: usize,
    sink: &mut dyn FnMut(Vec<Log>, Vec<Rejected>) -> Result<()>,
) -> Result<ReadStats> {
    let bytes = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let counting = CountingReader {
        inner: reader,
        bytes: bytes.clone(),
    };
    let ctx = RefCell::new(Ctx {
        name: name.to_string(),
        kind,
        batch,
        records: Vec::with_capacity(batch),
        rejected: Vec::new(),
        stats: ReadStats::default(),
        index: 0,
        sink,
        error: None,
    });
    let mut de = serde_json::Deserializer::from_reader(counting);
    let parsed = match format {
        Format::LogsDocument => de::Deserializer::deserialize_map(&mut de, DocSeed(&ctx)),
        _ => ArraySeed(&ctx).deserialize(&mut de),
    }
    .and_then(|()| de.end());
    let mut ctx = ctx.into_inner();
    if let Some(e) = ctx.error.take() {
        return Err(e);
    }
    let flushed = ctx.emit();
    if let Some(e) = ctx.error.take() {
        return Err(e);
    }
    if let Err(msg) = flushed {
        return Err(Error::Buffer(msg));
    }
    ctx.stats.bytes = bytes.get();
    if let Err(e) = parsed {
        return Err(Error::Decode {
            what: format!("{name} after element {}", ctx.index),
            reason: format!("broken JSON, the rest of the document cannot be read: {e}"),
        });
    }
    Ok(ctx.stats)
}

struct CountingReader<R> {
    inner: R,
    bytes: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: std::io::Read> std::io::Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes.set(self.bytes.get() + n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_slices_cover_the_input_once_with_its_line_numbers() {
        let data = b"{\"a\":1}\n\n{\"a\":3}\nbroken\n{\"a\":5}";
        for per in 1..=6 {
            let (slices, lines) = line_slices(data, per);
            assert_eq!(lines, 5, "{per} per slice");
            let joined: Vec<u8> = slices.iter().flat_map(|(s, _)| s.to_vec()).collect();
            assert_eq!(joined, data.to_vec(), "{per} per slice");
            // Each slice's lines decode with the numbers they have in the whole input.
            let mut rejected = Vec::new();
            let mut records = 0;
            for (slice, first) in &slices {
                let (logs, bad) = decode_json_lines(slice, *first, "in", RecordType::Log);
                records += logs.len();
                rejected.extend(bad.into_iter().map(|r| r.what));
            }
            assert_eq!(records, 3, "{per} per slice");
            assert_eq!(rejected, ["line 4 of in"], "{per} per slice");
        }
        let (slices, lines) = line_slices(b"{}\n{}\n", 1);
        assert_eq!((slices.len(), lines), (2, 2));
        assert_eq!(line_slices(b"", 256), (Vec::new(), 0));
    }

    fn collect(input: &str) -> (Result<ReadStats>, Vec<Log>, Vec<Rejected>) {
        let mut logs = Vec::new();
        let mut bad = Vec::new();
        let r = read_input(
            input.as_bytes(),
            "in.json",
            RecordType::Log,
            2,
            &mut |l, b| {
                logs.extend(l);
                bad.extend(b);
                Ok(())
            },
        );
        (r, logs, bad)
    }

    #[test]
    fn blocks_hold_whole_lines_across_reader_buffers() {
        let mut input = String::new();
        for i in 0..300 {
            input.push_str(&"x".repeat(i % 37));
            input.push('\n');
        }
        input.push_str("last line without newline");
        for capacity in [1, 7, 64, 1 << 16] {
            for batch in [1, 5, 64, 1000] {
                let mut reader = std::io::BufReader::with_capacity(capacity, input.as_bytes());
                let mut line_no = 0;
                let mut whole = Vec::new();
                let mut next_first = 1;
                while let Some(b) = read_block(&mut reader, "t", batch, &mut line_no).expect("read")
                {
                    assert_eq!(b.first_line, next_first);
                    let lines = b.data.split(|&c| c == b'\n').count()
                        - usize::from(b.data.ends_with(b"\n"));
                    assert!(lines <= batch, "{lines} lines in a block of {batch}");
                    next_first += lines as u64;
                    whole.extend_from_slice(&b.data);
                }
                assert_eq!(whole, input.as_bytes(), "capacity {capacity} batch {batch}");
                assert_eq!(line_no, 301);
            }
        }
    }

    #[test]
    fn lines_split_like_split() {
        for text in ["", "\n", "a", "a\n", "a\nb", "\n\na\n\nbc\n", "x\r\ny"] {
            let want: Vec<&[u8]> = text.as_bytes().split(|&b| b == b'\n').collect();
            assert_eq!(
                lines_of(text.as_bytes()).collect::<Vec<_>>(),
                want,
                "{text:?}"
            );
        }
    }

    #[test]
    fn detects_formats() {
        for (text, want) in [
            ("{\"a\":1}\n{\"a\":2}", Format::JsonLines),
            ("  [ {\"a\":1} ]", Format::Array),
            ("{\"logs\": [{\"a\":1}]}", Format::LogsDocument),
            ("{ \"logs\" :\n [", Format::LogsDocument),
            ("{\"logs\":\"x\"}", Format::JsonLines),
            ("\u{feff}[1]", Format::Array),
        ] {
            let mut r = text.as_bytes();
            assert_eq!(detect(&mut r).expect("detect"), want, "{text}");
        }
    }

    #[test]
    fn json_lines_reject_bad_lines_with_numbers() {
        let (r, logs, bad) = collect("{\"message\":\"a\"}\n\nnot json\n[1]\n{\"message\":\"b\"}\n");
        let stats = r.expect("read");
        assert_eq!(stats.records, 2);
        assert_eq!(stats.rejected, 2);
        assert_eq!(
            logs.iter().map(|l| l.message.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(bad[0].what, "line 3 of in.json");
        assert_eq!(bad[0].raw, "not json");
        assert_eq!(bad[1].what, "line 4 of in.json");
    }

    #[test]
    fn parallel_reading_keeps_order_line_numbers_and_counts() {
        let mut input = String::new();
        for i in 1..=5000 {
            match i % 700 {
                0 => input.push_str("not json\n"),
                350 => input.push('\n'),
                _ => input.push_str(&format!("{{\"message\":\"m{i}\"}}\n")),
            }
        }
        // Collected in turn: the order seen is the order of the input.
        let collected = parking_lot::Mutex::new((Vec::new(), Vec::new(), 0));
        let stats = read_input_parallel(
            input.as_bytes(),
            "in.jsonl",
            RecordType::Log,
            64,
            3,
            &|l: Vec<LogRef<'_>>, b: Vec<Rejected>, turn: &Turn<'_>| {
                let mut owned: Vec<Log> = l.into_iter().map(LogRef::into_owned).collect();
                let mut b = b;
                turn.push(&mut || {
                    let mut c = collected.lock();
                    c.0.append(&mut owned);
                    c.1.append(&mut b);
                    c.2 += 1;
                    Ok(())
                })
            },
        )
        .expect("read");
        let (logs, bad, calls) = collected.into_inner();
        let want: Vec<String> = (1..=5000)
            .filter(|i| i % 700 != 0 && i % 700 != 350)
            .map(|i| format!("m{i}"))
            .collect();
        let got: Vec<String> = logs.into_iter().map(|l| l.message).collect();
        assert_eq!(got, want);
        assert_eq!(stats.records, want.len() as u64);
        assert_eq!(stats.rejected, 7);
        assert_eq!(stats.bytes, input.len() as u64);
        let lines: Vec<&str> = bad.iter().map(|r| r.what.as_str()).collect();
        assert_eq!(lines[0], "line 700 of in.jsonl");
        assert_eq!(lines[6], "line 4900 of in.jsonl");
        assert!(calls > 10, "{calls} calls");
    }

    /// JSON Lines `{"message":"m0"}`, `{"message":"m1"}`, ... (`n` of them).
    fn messages(n: usize) -> String {
        (0..n)
            .map(|i| format!("{{\"message\":\"m{i}\"}}\n"))
            .collect()
    }

    /// Reads 40 one-line blocks on two threads, handing each block's message and turn to
    /// `f`. Block 0 is slow (600 ms before `f`), block 1 a little (100 ms: time for the
    /// reading thread to send block 2), so the thread of block 1 takes block 2 ahead.
    fn read_with_block_0_slow(
        f: &(dyn Fn(String, &Turn<'_>) -> Result<()> + Sync),
    ) -> Result<ReadStats> {
        let input = messages(40);
        read_input_parallel(
            input.as_bytes(),
            "in.jsonl",
            RecordType::Log,
            1,
            2,
            &|l: Vec<LogRef<'_>>, _, turn: &Turn<'_>| {
                let message = l[0].message.to_string();
                let nap = match message.as_str() {
                    "m0" => 600,
                    "m1" => 100,
                    _ => 0,
                };
                std::thread::sleep(std::time::Duration::from_millis(nap));
                f(message, turn)
            },
        )
    }

    #[test]
    fn a_block_waiting_for_its_turn_takes_the_next_one_ahead() {
        // Block 0 is slow to push: meanwhile the other thread prepares block 1, then
        // (instead of waiting for block 0) takes block 2 ahead and prepares it too.
        let prepared_before_first_push = parking_lot::Mutex::new(None);
        let prepared = AtomicU64::new(0);
        let pushed = parking_lot::Mutex::new(Vec::new());
        read_with_block_0_slow(&|message, turn| {
            prepared.fetch_add(1, Ordering::SeqCst);
            turn.push(&mut || {
                if message == "m0" {
                    *prepared_before_first_push.lock() = Some(prepared.load(Ordering::SeqCst));
                }
                pushed.lock().push(message.clone());
                Ok(())
            })
        })
        .expect("read");
        let want: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
        assert_eq!(*pushed.lock(), want, "pushed in input order");
        let ahead = prepared_before_first_push.lock().expect("m0 pushed");
        assert!(
            ahead >= 3,
            "blocks 0, 1 and 2 prepared before block 0's push, got {ahead}"
        );
    }

    #[test]
    fn a_failure_ahead_keeps_the_blocks_before_it() {
        let pushed = parking_lot::Mutex::new(Vec::new());
        let m2_seen = std::sync::atomic::AtomicBool::new(false);
        let m2_seen_before_m0 = parking_lot::Mutex::new(None);
        // Block 2, taken ahead, fails before its push.
        let err = read_with_block_0_slow(&|message, turn| {
            if message == "m2" {
                m2_seen.store(true, Ordering::SeqCst);
                return Err(Error::Buffer("m2 refused".into()));
            }
            turn.push(&mut || {
                if message == "m0" {
                    *m2_seen_before_m0.lock() = Some(m2_seen.load(Ordering::SeqCst));
                }
                pushed.lock().push(message.clone());
                Ok(())
            })
        })
        .expect_err("m2 fails");
        assert!(err.to_string().contains("m2 refused"), "{err}");
        assert_eq!(
            *pushed.lock(),
            ["m0", "m1"],
            "before the failure: pushed; after: not"
        );
        assert_eq!(*m2_seen_before_m0.lock(), Some(true), "m2 was taken ahead");
    }

    #[test]
    fn a_failed_push_stops_the_block_taken_ahead() {
        let pushed = parking_lot::Mutex::new(Vec::new());
        // The thread of block 1 takes block 2 ahead; then block 1's push fails.
        let err = read_with_block_0_slow(&|message, turn| {
            turn.push(&mut || {
                if message == "m1" {
                    return Err(Error::Buffer("m1's push refused".into()));
                }
                pushed.lock().push(message.clone());
                Ok(())
            })
        })
        .expect_err("m1's push fails");
        assert!(err.to_string().contains("m1's push refused"), "{err}");
        assert_eq!(
            *pushed.lock(),
            ["m0"],
            "nothing pushed after the failed push"
        );
    }

    #[test]
    fn parallel_reading_stops_at_the_first_error() {
        let input = messages(10_000);
        let seen = parking_lot::Mutex::new(0);
        let err = read_input_parallel(
            input.as_bytes(),
            "in.jsonl",
            RecordType::Log,
            10,
            2,
            &|l: Vec<LogRef<'_>>, _, turn: &Turn<'_>| {
                turn.push(&mut || {
                    let mut seen = seen.lock();
                    *seen += l.len();
                    if *seen >= 100 {
                        Err(Error::Closed)
                    } else {
                        Ok(())
                    }
                })
            },
        )
        .expect_err("process error");
        assert!(matches!(err, Error::Closed), "{err}");
        assert_eq!(*seen.lock(), 100, "nothing after the first error");
        let err = read_input_parallel(
            input.as_bytes(),
            "in.jsonl",
            RecordType::Log,
            10,
            2,
            &|_: Vec<LogRef<'_>>, _, _: &Turn<'_>| -> Result<()> {
                Err(Error::Buffer("refused".into()))
            },
        )
        .expect_err("process error");
        assert!(err.to_string().contains("refused"), "{err}");
        // A panic is an error too, and later blocks do not wait for its turn forever.
        let err = read_input_parallel(
            input.as_bytes(),
            "in.jsonl",
            RecordType::Log,
            10,
            2,
            &|l: Vec<LogRef<'_>>, _, turn: &Turn<'_>| -> Result<()> {
                assert!(l.iter().all(|r| r.message != "m55"), "a bug");
                turn.push(&mut || Ok(()))
            },
        )
        .expect_err("panic");
        assert!(
            err.to_string().contains("lines 51.. of in.jsonl panicked"),
            "{err}"
        );
    }

    #[test]
    fn arrays_and_documents_stream() {
        let (r, logs, bad) =
            collect("[{\"message\":\"a\"}, 5, {\"message\":\"b\"}, {\"message\":\"c\"}]");
        assert_eq!(r.expect("read").records, 3);
        assert_eq!(logs.len(), 3);
        assert_eq!(bad[0].what, "element 2 of in.json");
        let (r, logs, _) = collect("{\"logs\": [{\"msg\":\"a\"}], \"other\": 1}");
        assert_eq!(r.expect("read").records, 1);
        assert_eq!(logs[0].message, "a");
    }

    #[test]
    fn truncated_document_keeps_what_was_read() {
        let (r, logs, _) = collect("[{\"message\":\"a\"}, {\"message\":\"b\"}, {\"mess");
        let err = r.expect_err("truncated");
        assert!(err.to_string().contains("after element 2"), "{err}");
        assert_eq!(logs.len(), 2);
    }

    #[test]
    fn invalid_utf8_line_is_rejected() {
        let mut input = b"{\"message\":\"a\"}\n".to_vec();
        input.extend_from_slice(b"{\"message\":\"\xff\"}\n");
        let mut n = 0;
        let mut bad = Vec::new();
        read_json_lines(&input[..], "x", RecordType::Log, 10, &mut |l, b| {
            n += l.len();
            bad.extend(b);
            Ok(())
        })
        .expect("read");
        assert_eq!(n, 1);
        assert!(
            bad[0].reason.to_lowercase().contains("utf-8"),
            "{}",
            bad[0].reason
        );
    }
}
