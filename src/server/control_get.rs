//! The control thread's answers to `LIST` and `GET`: the file list, indexing on demand, and
//! the creation of a session with its `META`.

use super::*;

impl Control {
    pub(super) fn list(&mut self, src: SocketAddr, start: u32) {
        let files = match self.catalog.list() {
            Ok(f) => f,
            Err(e) => {
                self.error(src, 0, ErrorCode::Internal, &format!("cannot list: {e}"));
                return;
            }
        };
        let mut entries = Vec::new();
        let mut room = MAX_DATAGRAM - 64;
        for (name, size) in files.iter().skip(start as usize) {
            let need = 9 + name.len();
            if need > room {
                break;
            }
            room -= need;
            entries.push(ListEntry { name, size: *size });
        }
        let msg = Message::Listing {
            total: files.len() as u32,
            start,
            entries,
        };
        self.send(src, &msg);
    }

    pub(super) fn get(&mut self, req: PendingGet) {
        // A repeated GET (its META was lost): answer again, do not start a second session.
        if let Some(s) = self.sessions.for_request(req.peer, req.request_id) {
            s.heard();
            self.meta(&s, req.request_id);
            return;
        }
        if self
            .pending
            .iter()
            .any(|p| p.peer == req.peer && p.request_id == req.request_id)
        {
            self.send(
                req.peer,
                &Message::Wait {
                    request_id: req.request_id,
                },
            );
            return;
        }
        match self.catalog.cached(&req.name, req.payload_size) {
            Ok(Some(file)) => self.create_session(req, file),
            Ok(None) => {
                let job = IndexJob {
                    name: req.name.clone(),
                    payload_size: req.payload_size,
                };
                if !self.indexing.contains(&job) && self.indexer.request(job.clone()) {
                    self.indexing.insert(job);
                }
                self.send(
                    req.peer,
                    &Message::Wait {
                        request_id: req.request_id,
                    },
                );
                self.pending.push(req);
            }
            Err(e) => self.file_error(&req, &e),
        }
    }

    pub(super) fn file_error(&mut self, req: &PendingGet, e: &FileError) {
        let code = match e {
            FileError::BadName(_) | FileError::NotRegular(_) => ErrorCode::BadName,
            FileError::NotFound(_) => ErrorCode::NotFound,
            FileError::Io { .. } => ErrorCode::Internal,
            FileError::Changed(_) => ErrorCode::FileChanged,
        };
        tracing::info!("[REFUSED] {} asked for {:?}: {e}", req.peer, req.name);
        self.error(req.peer, req.request_id, code, &e.to_string());
    }

    pub(super) fn indexed(&mut self, done: Indexed) {
        let Indexed { job, result, took } = done;
        if let Ok(f) = &result {
            tracing::info!(
                "[INDEX] {} indexed: {} bytes, {} datagrams of {} bytes, in {:.3} s",
                job.name,
                f.size,
                f.datagrams(),
                f.payload_size as usize + DATA_HEADER_LEN,
                took.as_secs_f64()
            );
        }
        self.indexing.remove(&job);
        let (ready, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.name == job.name && p.payload_size == job.payload_size);
        self.pending = rest;
        for req in ready {
            match &result {
                Ok(f) => self.create_session(req, f.clone()),
                Err(e) => self.file_error(&req, e),
            }
        }
    }

    pub(super) fn create_session(&mut self, req: PendingGet, file: Arc<IndexedFile>) {
        let active = self.sessions.active();
        if active >= self.cfg.max_sessions {
            self.stats.busy.fetch_add(1, Ordering::Relaxed);
            let text = format!("server busy: {active} sessions (--max-sessions)");
            self.busy(req.peer, req.request_id, BUSY_RETRY_AFTER, &text);
            return;
        }
        if file.datagrams() > u32::MAX as u64 {
            self.error(
                req.peer,
                req.request_id,
                ErrorCode::BadRequest,
                "file too large for this datagram size",
            );
            return;
        }
        let id = self.sessions.new_id();
        let now = Instant::now();
        let datagram_size = file.payload_size as usize + DATA_HEADER_LEN;
        let max_window = (self.cfg.max_window_bytes / file.payload_size as u64).max(1);
        let window =
            (req.window_bytes / file.payload_size).clamp(1, max_window.min(u32::MAX as u64) as u32);
        let state = SenderState::new(
            SenderConfig {
                mode: req.mode,
                file_size: file.size,
                payload_size: file.payload_size,
                window,
                cc: self.cfg.cc,
                rate_cap_bps: self.cfg.rate_bps,
                seed: rand::random(),
            },
            now,
            unix_ns(),
        );
        let ctx = SessionCtx {
            stats: self.stats.clone(),
            engine: self.cfg.engine,
            summaries: self.summaries_tx.clone(),
            gso: self.gso,
        };
        let session =
            Arc::new(Session::new(id, req.peer, file, state, ctx).with_send_path(req.send_path));
        session.heard();
        tracing::info!(
            "[TRANSFER] session {:08x}: sending {} ({} bytes, {} mode, {}-byte datagrams, {} send path, window {} datagrams, congestion control {}) to {}",
            id,
            session.file.name,
            session.file.size,
            req.mode.as_str(),
            datagram_size,
            session.send_path.as_str(),
            window,
            self.cfg.cc.as_str(),
            req.peer
        );
        let rate = self.cfg.acks_per_session;
        self.sessions.insert(
            Entry {
                session: session.clone(),
                acks: RateBudget::new(rate, rate / 10.0, now),
            },
            req.request_id,
        );
        // META first, then data: on one flow the kernel keeps them in order.
        self.meta(&session, req.request_id);
        self.engine.start(session);
    }

    pub(super) fn meta(&mut self, s: &Session, request_id: u32) {
        let f = &s.file;
        let meta = Message::Meta(Meta {
            request_id,
            session: s.id,
            file_size: f.size,
            payload_size: f.payload_size,
            mode: s.mode,
            manifest_hash: f.manifest_hash,
            content_hash: f.content_hash,
        });
        self.send(s.peer, &meta);
    }
}
