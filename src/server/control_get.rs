//! The control thread's answers to `LIST` and `GET`: the file list, scanning on demand, and
//! the creation of a session with its `META`.

use super::*;

impl Control {
    /// One page of the file list, at most three times as long as the `LIST` that asked
    /// (`request_len`, padded to 1200 bytes by the client): a token replayed in someone
    /// else's name cannot make the answer an amplifier.
    /// On a connection (`conn`), only the files its key may read are listed.
    pub(super) fn list(
        &mut self,
        src: SocketAddr,
        start: u32,
        request_len: usize,
        conn: Option<u32>,
    ) {
        let mut files = match self.catalog.list() {
            Ok(f) => f,
            Err(e) => {
                self.error(src, 0, ErrorCode::Internal, &format!("cannot list: {e}"));
                return;
            }
        };
        if let Some(c) = conn {
            match self.secure.as_ref().and_then(|s| s.connection(c)) {
                Some(c) => files.retain(|(name, _)| c.client.may_read(name)),
                None => return,
            }
        }
        let mut entries = Vec::new();
        // 3x the request, less the LISTING's own header, counts and trailer (and the seal).
        let seal = if conn.is_some() { SEAL_OVERHEAD } else { 0 };
        let mut room = (3 * request_len)
            .min(MAX_DATAGRAM)
            .saturating_sub(18 + seal);
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
                let job = ScanJob {
                    name: req.name.clone(),
                    payload_size: req.payload_size,
                };
                if !self.scanning.contains(&job) && self.scanner.request(job.clone()) {
                    self.scanning.insert(job);
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
            FileError::NotFound(_) | FileError::Unfinished(_) => ErrorCode::NotFound,
            FileError::Io { .. } => ErrorCode::Internal,
            FileError::Changed(_) => ErrorCode::FileChanged,
            FileError::TooLarge { .. } => ErrorCode::NotFound,
        };
        let kind = match code {
            ErrorCode::NotFound => "for files not served",
            ErrorCode::BadName => "for bad names",
            _ => "for files that could not be read",
        };
        let peer = req.peer;
        self.refusals.log(kind, Instant::now(), || {
            crate::report::escape(&format!("{peer} asked for {:?}: {e}", req.name))
        });
        self.error(req.peer, req.request_id, code, &e.to_string());
    }

    pub(super) fn scanned(&mut self, done: Scanned) {
        let Scanned { job, result, took } = done;
        if let Ok(f) = &result {
            tracing::info!(
                "[SCAN] {} scanned: {} bytes, {} of {} bytes, in {:.3} s",
                crate::report::escape(&job.name),
                f.size,
                crate::report::plural(f.datagrams(), "datagram"),
                f.payload_size as usize + DATA_HEADER_LEN,
                took.as_secs_f64()
            );
        }
        self.scanning.remove(&job);
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

    /// Whether there is a place for a session of `peer`: under both limits, or once the most
    /// stalled session (of that address, if its own limit is the one reached) has yielded
    /// its place. Otherwise the client is told busy.
    fn make_room(&mut self, req: &PendingGet) -> bool {
        let ip = req.peer.ip();
        let (active, of_ip) = (self.sessions.active(), self.sessions.of_ip(ip));
        let (limit, text) = if of_ip >= self.cfg.sessions_per_ip {
            (
                Some(ip),
                format!("server busy: {of_ip} sessions from your address (--sessions-per-ip)"),
            )
        } else if active >= self.cfg.max_sessions {
            (
                None,
                format!("server busy: {active} sessions (--max-sessions)"),
            )
        } else {
            return true;
        };
        let now = Instant::now();
        // The search looks at every session: after one that found none, the next waits a
        // little (a flood of GETs at a full server must not cost a scan each).
        if self
            .no_stalled_at
            .is_some_and(|t| now.saturating_duration_since(t) < STALL_SEARCH_EVERY)
        {
            self.stats.busy.fetch_add(1, Ordering::Relaxed);
            self.busy(req.peer, req.request_id, BUSY_RETRY_AFTER, &text);
            return false;
        }
        self.no_stalled_at = None;
        if let Some((s, stalled)) = self.sessions.most_stalled(limit, STALL_YIELD, now) {
            tracing::info!(
                "[SESSION {:08x}] {}: no progress for {:.1} s while the server is full: its place goes to {}",
                s.id,
                s.peer,
                stalled.as_secs_f64(),
                req.peer
            );
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
            s.close(CloseReason::Evicted);
            // Released by its engine shortly; the new session may take its place now.
            return true;
        }
        self.no_stalled_at = Some(now);
        self.stats.busy.fetch_add(1, Ordering::Relaxed);
        self.busy(req.peer, req.request_id, BUSY_RETRY_AFTER, &text);
        false
    }

    pub(super) fn create_session(&mut self, req: PendingGet, file: Arc<ScannedFile>) {
        // A request that came sealed is answered sealed, or not at all (its connection went
        // while the file was scanned), before any other session gives up its place for it.
        let sealer = match req.conn {
            Some(c) => match self.secure.as_ref().and_then(|s| s.connection(c)) {
                Some(c) => Some(c.sealer.clone()),
                None => return,
            },
            None => None,
        };
        if !self.make_room(&req) {
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
        let datagram_size = file.payload_size as usize
            + DATA_HEADER_LEN
            + if req.conn.is_some() { SEAL_OVERHEAD } else { 0 };
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
                path: self
                    .paths
                    .as_ref()
                    .and_then(|m| m.recall(req.peer.ip(), now)),
            },
            now,
            unix_ns(),
        );
        let ctx = SessionCtx {
            stats: self.stats.clone(),
            engine: req.engine,
            summaries: self.summaries_tx.clone(),
            gso: self.gso && req.engine == EngineKind::Uring,
        };
        // Splicing a file in small pages is slower than copying it (see `small_pages`).
        let send_path = match req.send_path {
            SendPath::Auto if file.small_pages => SendPath::Sendmsg,
            p => p,
        };
        let client = req
            .conn
            .and_then(|c| self.secure.as_ref()?.connection(c))
            .map(|c| format!(", key {}", client_name(&c.client)))
            .unwrap_or_default();
        let session = Arc::new(
            Session::new(id, req.peer, file, state, ctx)
                .with_send_path(send_path)
                .with_sealer(sealer),
        );
        session.heard();
        tracing::info!(
            "[TRANSFER] session {:08x}: sending {} ({} bytes, {} mode, engine {}, {}-byte datagrams, {} send path, window {} datagrams, congestion control {}) to {}{}",
            id,
            crate::report::escape(&session.file.name),
            session.file.size,
            req.mode.as_str(),
            req.engine.as_str(),
            datagram_size,
            session.send_path.as_str(),
            window,
            // Blast mode has no control loop: it sends at --rate or as fast as it can.
            match req.mode {
                Mode::Reliable => self.cfg.cc.as_str(),
                Mode::Blast => "none (blast)",
            },
            req.peer,
            match &session.sealer {
                Some(_) => format!(" (sealed{client})"),
                None => String::new(),
            }
        );
        let rate = self.cfg.acks_per_session;
        self.sessions.insert(
            Entry {
                session: session.clone(),
                acks: RateBudget::new(rate, rate / 10.0, now),
                traced_at: None,
            },
            req.request_id,
        );
        // JOIN and META together stay within three times the GET (as every answer to a
        // request does): too short a GET (a one- or two-letter name, an IPv6 group) goes
        // by unicast.
        // (A sealed GET comes from an authenticated client: no amplification to bound.)
        let fits = |g: &Groups| {
            req.conn.is_some() || g.join_len() + crate::protocol::META_LEN <= 3 * req.request_len
        };
        if req.multicast && self.groups.as_ref().is_some_and(fits) {
            let groups = self.groups.as_mut().expect("checked");
            if let Some(join) = groups.join(&session.file, req.mode, id, req.request_id, now) {
                session.state().join_group();
                let _ = session.group.set(join);
            }
        }
        // (JOIN,) META first, then data: on one flow the kernel keeps them in order.
        self.meta(&session, req.request_id);
        match self.engines.get(req.engine) {
            Some(engine) => engine.start(session),
            // Checked when the GET came: never here.
            None => session.close(CloseReason::Shutdown),
        }
    }

    pub(super) fn meta(&mut self, s: &Session, request_id: u32) {
        // A member learns its group before its META: a META alone means unicast. A sealed
        // transmission's key goes first (sealed to this member alone).
        if let Some((key, iv)) = s
            .group
            .get()
            .and_then(|j| self.groups.as_ref()?.seal_key(j.group))
        {
            let group = s.group.get().map_or(0, |j| j.group);
            self.send(s.peer, &Message::GroupKey { group, key, iv });
        }
        if let Some(join) = s.group.get() {
            self.send(
                s.peer,
                &Message::Join(crate::protocol::Join {
                    request_id,
                    ..*join
                }),
            );
        }
        s.state().meta_sent(Instant::now());
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
