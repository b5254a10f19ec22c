#!/usr/bin/env bash
# A multicast LAN on one machine, and the baselines that a multicast transfer is measured against.
#
# The testbed (testbed_up / testbed_down): a sender namespace rbm-s and $RECEIVERS receiver
# namespaces rbm-r1..rbm-rK, each with one veth (eth0 inside) plugged into a Linux bridge br0 in a
# switch namespace rbm-sw (mcast_snooping 0: the bridge floods every group to every port, as it
# would anyway while no IGMP querier is present). Sender 10.77.0.1/24, receiver i 10.77.0.(10+i)/24,
# 224.0.0.0/4 routed on eth0 in every host.
#   - The sender's link is its NIC: tbf at $RATE on the sender's own eth0 egress, so a sender
#     that outruns it meets its own qdisc, as with a real NIC: blocked while what its socket
#     buffer holds fits in the tbf queue ($QUEUE at $RATE, plus $BURST), dropped at the sender
#     past that (each run notes tbf's drops). Shaping the switch's port instead (a router's
#     egress, as benches/netns-lib.sh does) would model a bottleneck further along, where the
#     sender feels no backpressure; the switch port towards the sender only carries the
#     receivers' answers, so a tbf there would shape the wrong direction.
#     Past the bridge nothing is shaped: the switch copies each datagram to every port.
#   - Loss: nftables in each receiver drops $LOSS_PERMILLE of every thousand incoming UDP
#     datagrams at random, independently per receiver (input hook). nftables sees a UDP GSO
#     burst as one packet, so the sender's eth0 has tx-udp-segmentation off while loss is on.
#   - br_netfilter is off inside the switch (bridge-nf-call-*=0): a switch runs no IP firewall.
#
# The measurements, $RUNS runs each, medians; each run also reads the sender's eth0 tx_bytes
# before and after (egress on the wire, Ethernet headers included), to compare with what one
# receiver alone costs:
#   - floor: /work/shared/tools/mcast-floor (its README.md): `rcv GROUP PORT` in every receiver,
#     then `snd GROUP PORT N 1472 PACE_BPS` in the sender, N = ceil(FILE_MIB MiB / 1472) (snd
#     sends whole sendmmsg batches of 64, so up to 63 more; the loss is counted on what it sent). No
#     protocol, no repair: the time until the slowest receiver has its last datagram is what no
#     reliable multicast can beat on this machine. rcv prints only its own first-to-last span, so
#     the script takes timestamps: t0 (CLOCK_REALTIME) just before it starts snd, and, from a
#     small LD_PRELOAD shim in rcv (lastrx.so, built below; rcv.c is untouched), the kernel's
#     SO_TIMESTAMPNS arrival time of the last datagram each receiver read (stamped as its veth
#     queued it). floor = the latest of those - t0 (snd's start-up, a few ms, included).
#     Not rcv's exit: it waits with SO_RCVTIMEO = 1 s and recvmmsg(64) without MSG_WAITFORONE,
#     so its last, partial batch returns 1 s after the last datagram and the next call times out
#     1 s later; exit - 1 s - (1 s if count % 64 != 0) is kept in the notes as a check
#     (exit-estimate), but each such timeout runs up to 32 ms late (8 jiffies at HZ=250, the
#     timer wheel's granularity for a 1 s timer): it reads ~40 ms high. rcv never exits while
#     nothing arrives: every rcv runs under `timeout`.
#     On a 2-core VM the bridge's fan-out runs in softirq on one CPU, and it paces snd itself:
#     with ten receivers at 1gbit, snd manages ~260 Mbit/s (~4 s for 128 MiB; one receiver 1.15 s).
#   - uftp (Debian's 4.10): `uftpd -d -q -I eth0 -U UID -B BUF -c 20971520 -D DIR` in every
#     receiver, then `uftp -R PACE_KBPS -b 1428 -s 50 -I eth0 -B BUF -H UID,UID,... -S STATUS FILE`
#     in the sender (no encryption: uftp's default): a closed group, so it waits for all of them.
#     The time is the whole uftp command's (announce to the last receiver's completion; uftp's
#     own STATS time, from registration on, is in the notes), and every receiver's copy is
#     compared with the source (cmp): a run with a bad copy or a non-zero exit counts as failed.
#   - ringblast: `serve --multicast` in the sender, `get --multicast` in every receiver (case
#     "ringblast"), and the same by unicast (case "unicast": one session per receiver, the file
#     sent ten times); see rb_run below.
#
# Each case prints one line: median seconds, the file's payload over it in Mbit/s, each run's
# seconds, the median of the sender's tx bytes (and that over the file's size), then a line of
# notes per run.
#
# Usage: benches/mcast-testbed.sh
#   env: RECEIVERS=10 FILE_MIB=128 RATE=1gbit LOSS_PERMILLE=20 RUNS=3
#        PACE_BPS (default 95% of RATE: snd's rate, and uftp -R in Kbps)
#        QUEUE=50ms BURST=256kb (the sender's tbf latency and bucket)
#        CASES="floor ringblast uftp unicast" (which measurements, in order)
#        JSON=FILE (a summary as JSON)  BIN=path (the ringblast binary; built if missing)
#        GATHER=DURATION (serve --multicast-gather; default the server's)
#        LOSSY=N:PERMILLE (receiver N loses that many per thousand instead)
#        SLOW=N:RATE (receiver N's switch port shaped to RATE, e.g. 100mbit)
#        FLOOR_DIR=/work/shared/tools/mcast-floor
#        QUIET_WAIT=30 (before each run, wait up to that many seconds for the CPUs to be < 25%
#          busy; each run notes how busy they were: on 2 cores a build alongside skews it all)
#        LOGS=DIR (keep every run's logs there)
# As a library: MCAST_TESTBED_LIB=1 . benches/mcast-testbed.sh   (defines the functions only;
#   testbed_up reads RECEIVERS RATE LOSS_PERMILLE QUEUE BURST; testbed_down removes it all.)
# Needs root; installs nftables, ethtool, uftp, iproute2 and gcc from Debian if a command is missing.

# ---- the testbed --------------------------------------------------------------------------------
MT_S=rbm-s MT_SW=rbm-sw MT_DEV=eth0 MT_BR=br0
MT_SADDR=10.77.0.1
MT_BG=() # background processes the script started (timeout wrappers, subshells)

mt_recv_ns() { echo "rbm-r$1"; }
mt_recv_addr() { echo "10.77.0.$((10 + $1))"; }

# bits/s of a tc rate: 1gbit, 200mbit, 500kbit, 1000000bit or a bare number (bits/s); kbps,
# mbps, gbps are bytes/s, as in tc.
rate_bps() {
  awk -v r="$1" 'BEGIN {
    if (!match(r, /^[0-9.]+/)) { print "bad rate: " r > "/dev/stderr"; exit 1 }
    n = substr(r, 1, RLENGTH); u = tolower(substr(r, RLENGTH + 1))
    m["bit"] = 1; m[""] = 1; m["kbit"] = 1e3; m["mbit"] = 1e6; m["gbit"] = 1e9; m["tbit"] = 1e12
    m["bps"] = 8; m["kbps"] = 8e3; m["mbps"] = 8e6; m["gbps"] = 8e9
    if (!(u in m)) { print "bad rate unit: " r > "/dev/stderr"; exit 1 }
    printf "%.0f\n", n * m[u] }'
}

# Installs what a missing command needs, from Debian's packages (one apt-get update, quiet).
mcast_install_deps() {
  local need=() cmd pkg
  for cmd in ip:iproute2 tc:iproute2 nft:nftables ethtool:ethtool uftp:uftp uftpd:uftp cc:gcc; do
    pkg=${cmd#*:}
    command -v "${cmd%%:*}" > /dev/null || [[ " ${need[*]} " == *" $pkg "* ]] || need+=("$pkg")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  echo "installing ${need[*]}" >&2
  apt-get update -qq > /dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" > /dev/null
}

# mt_ours PID: PID is still a child of this shell (not a process that took over a PID that one
# of ours left).
mt_ours() { [ "$(awk '{print $4}' "/proc/$1/stat" 2> /dev/null)" = $$ ]; }

# The namespaces this testbed owns (whatever a run that died left, too).
mt_namespaces() { ip netns list | awk '{print $1}' | grep -E '^rbm-(s|sw|r[0-9]+)$' || true; }

testbed_down() {
  local ns pid
  for pid in "${MT_BG[@]}"; do { mt_ours "$pid" && kill "$pid"; } 2> /dev/null || true; done
  for ns in $(mt_namespaces); do
    ip netns pids "$ns" 2> /dev/null | xargs -r kill -9 2> /dev/null || true
  done
  for ns in $(mt_namespaces); do ip netns del "$ns" 2> /dev/null || true; done
  MT_BG=()
}

# mt_host NAMESPACE SWITCH_PORT ADDRESS: a host on the switch, eth0 inside, 224.0.0.0/4 on it.
mt_host() {
  ip netns add "$1"
  ip link add $MT_DEV netns "$1" type veth peer name "$2" netns $MT_SW
  ip -n $MT_SW link set "$2" master $MT_BR up
  ip -n "$1" link set lo up
  ip -n "$1" link set $MT_DEV up
  ip -n "$1" addr add "$3/24" dev $MT_DEV
  ip -n "$1" route add 224.0.0.0/4 dev $MT_DEV
}

testbed_up() {
  local k=${RECEIVERS:-10} loss=${LOSS_PERMILLE:-20} i ns port
  testbed_down
  ip netns add $MT_SW
  ip -n $MT_SW link set lo up
  ip -n $MT_SW link add $MT_BR type bridge mcast_snooping 0 stp_state 0 forward_delay 0
  ip -n $MT_SW link set $MT_BR up
  # br_netfilter, where loaded, would run every bridged frame through iptables' hooks.
  ip netns exec $MT_SW sysctl -qw net.bridge.bridge-nf-call-iptables=0 \
    net.bridge.bridge-nf-call-ip6tables=0 net.bridge.bridge-nf-call-arptables=0 2> /dev/null || true
  mt_host $MT_S p-s $MT_SADDR
  for i in $(seq "$k"); do
    ns=$(mt_recv_ns "$i")
    mt_host "$ns" "p-r$i" "$(mt_recv_addr "$i")"
    # LOSSY=N:PERMILLE: receiver N loses that much instead; SLOW=N:RATE: its port on the switch
    # is shaped to RATE (a slower link than the others').
    [ -n "${LOSSY:-}" ] && [ "${LOSSY%%:*}" = "$i" ] && loss=${LOSSY#*:}
    [ -n "${SLOW:-}" ] && [ "${SLOW%%:*}" = "$i" ] && ip netns exec $MT_SW tc qdisc add dev "p-r$i" root tbf \
      rate "${SLOW#*:}" burst 256kb latency 50ms
    if [ "$loss" -gt 0 ]; then
      ip netns exec "$ns" nft add table inet rbm
      ip netns exec "$ns" nft add chain inet rbm in '{ type filter hook input priority 0; }'
      ip netns exec "$ns" nft add rule inet rbm in meta l4proto udp numgen random mod 1000 \< "$loss" counter drop
    fi
    loss=${LOSS_PERMILLE:-20}
  done
  # nftables would drop a whole UDP GSO burst as one packet (one loss of up to 64 datagrams).
  if [ "$loss" -gt 0 ] || [ -n "${LOSSY:-}" ]; then
    ip netns exec $MT_S ethtool -K $MT_DEV tx-udp-segmentation off > /dev/null
  fi
  ip netns exec $MT_S tc qdisc add dev $MT_DEV root tbf rate "${RATE:-1gbit}" \
    burst "${BURST:-256kb}" latency "${QUEUE:-50ms}"
  # Every port forwarding before anyone sends (no STP, but be sure).
  for port in p-s $(seq -f p-r%g "$k"); do
    for _ in $(seq 50); do
      [ "$(ip netns exec $MT_SW cat "/sys/class/net/$port/brport/state")" = 3 ] && break
      sleep 0.1
    done
  done
  return 0
}

# The sender's eth0 tx_bytes (all it put on the wire).
mt_tx_bytes() { ip netns exec $MT_S cat /sys/class/net/$MT_DEV/statistics/tx_bytes; }

# Packets the sender's tbf dropped so far (its queue overflowed: the sender outran its link).
mt_tbf_drops() {
  ip netns exec $MT_S tc -s qdisc show dev $MT_DEV \
    | awk '/dropped/ { for (j = 1; j < NF; j++) if ($j == "(dropped") { sub(",", "", $(j + 1)); print $(j + 1) } }'
}

# Packets the kernel's per-CPU input backlog dropped (every veth hop goes through it; 10
# receivers multiply the packets the bridge hands on): /proc/net/softnet_stat's 2nd column.
mt_backlog_drops() {
  local sum=0 dropped
  while read -r _ dropped _; do sum=$((sum + 0x$dropped)); done < /proc/net/softnet_stat
  echo $sum
}

# mt_wait_joined GROUP: waits (up to 10 s) until every receiver's eth0 has joined GROUP.
mt_wait_joined() {
  local i ns
  for i in $(seq "${RECEIVERS:-10}"); do
    ns=$(mt_recv_ns "$i")
    for _ in $(seq 100); do
      ip -n "$ns" maddr show dev $MT_DEV | awk -v g="$1" '$1 == "inet" && $2 == g { f = 1 } END { exit !f }' \
        && continue 2
      sleep 0.1
    done
    echo "receiver $ns never joined $1" >&2
    return 1
  done
}

# mt_bounded SECS CMD...: runs CMD under timeout, in the background so that Ctrl-C reaches the
# script's trap at once (bash defers a trap while a foreground child runs); returns CMD's status.
mt_bounded() {
  local secs=$1 pid
  shift
  timeout -k 5 "$secs" "$@" &
  pid=$!
  MT_BG+=("$pid")
  wait "$pid"
}

# mt_stop PID: TERM to a process this script started, then waits (up to 10 s) until it is gone.
mt_stop() {
  mt_ours "$1" && kill "$1" 2> /dev/null || return 0
  for _ in $(seq 100); do
    kill -0 "$1" 2> /dev/null || return 0
    sleep 0.1
  done
  kill -9 "$1" 2> /dev/null || true
}

[ "${MCAST_TESTBED_LIB:-}" = 1 ] && return 0

# ---- the measurements ---------------------------------------------------------------------------
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib.sh
. benches/lib.sh
RECEIVERS=${RECEIVERS:-10}
FILE_MIB=${FILE_MIB:-128}
RATE=${RATE:-1gbit}
LOSS_PERMILLE=${LOSS_PERMILLE:-20}
RUNS=${RUNS:-3}
CASES=${CASES:-floor ringblast uftp unicast}
BIN=${BIN:-$PWD/target/release/ringblast}
if [[ " $CASES " == *" ringblast "* || " $CASES " == *" unicast "* ]] && [ ! -x "$BIN" ]; then
  cargo build --release --quiet
fi
QUIET_WAIT=${QUIET_WAIT:-30}
FLOOR_DIR=${FLOOR_DIR:-/work/shared/tools/mcast-floor}
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }
RATE_BPS=$(rate_bps "$RATE")
PACE_BPS=${PACE_BPS:-$((RATE_BPS * 95 / 100))}
FILE_BYTES=$((FILE_MIB << 20))
DGRAM=1472
NDGRAMS=$(((FILE_BYTES + DGRAM - 1) / DGRAM))
# The seconds the file takes on the wire at the pace: the scale of every timeout below.
WIRE_S=$(awk -v b=$FILE_BYTES -v r="$PACE_BPS" 'BEGIN { printf "%d\n", b * 8 / r + 1 }')

W=$(mktemp -d /tmp/rbm-mcast.XXXXXX)
trap 'testbed_down; rm -rf "$W"' EXIT
trap 'exit 130' INT TERM

mcast_install_deps
cc -O2 -o "$W/snd" "$FLOOR_DIR/snd.c"
cc -O2 -o "$W/rcv" "$FLOOR_DIR/rcv.c"
# lastrx.so, preloaded into rcv (whose source stays as it is): turns SO_TIMESTAMPNS on and, at
# exit, prints to stderr "last-rx SEC.NSEC", the CLOCK_REALTIME at which the kernel took in the
# last datagram that recvmmsg returned (stamped as the receiver's veth queued it). rcv's own exit
# comes 1-2 s of SO_RCVTIMEO later, and such a timeout runs late by up to 8 jiffies (32 ms at
# HZ=250: the timer wheel's granularity for a 1 s timer): too coarse for a ~1 s floor.
cat > "$W/lastrx.c" << 'EOF'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
static struct timespec last;
static long got;
static char ctl[1024][CMSG_SPACE(sizeof(struct timespec))];
int recvmmsg(int fd, struct mmsghdr *m, unsigned int vlen, int flags, struct timespec *tmo) {
  static int (*real)(int, struct mmsghdr *, unsigned int, int, struct timespec *);
  static int stamping;
  if (!real) real = dlsym(RTLD_NEXT, "recvmmsg");
  if (!stamping) { int one = 1; setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one); stamping = 1; }
  if (vlen > 1024) vlen = 1024;
  for (unsigned int i = 0; i < vlen; i++) {
    m[i].msg_hdr.msg_control = ctl[i];
    m[i].msg_hdr.msg_controllen = sizeof ctl[i];
  }
  int k = real(fd, m, vlen, flags, tmo);
  if (k > 0) {
    struct msghdr *h = &m[k - 1].msg_hdr;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c))
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) memcpy(&last, CMSG_DATA(c), sizeof last);
    got += k;
  }
  return k;
}
__attribute__((destructor)) static void report(void) {
  if (got) fprintf(stderr, "last-rx %ld.%09ld\n", (long)last.tv_sec, last.tv_nsec);
}
EOF
cc -O2 -shared -fPIC -o "$W/lastrx.so" "$W/lastrx.c" -ldl
make_file "$W/file.bin" $FILE_BYTES
testbed_up

# keep_logs FILE...: with LOGS set, copies FILEs to $LOGS/CASE-RUN/.
keep_logs() {
  [ -n "${LOGS:-}" ] || return 0
  mkdir -p "$LOGS/$RUN_CASE-$RUN_NO" && cp "$@" "$LOGS/$RUN_CASE-$RUN_NO/" 2> /dev/null || true
}

# Each run function sets RUN_S (seconds, empty if the run failed), RUN_TX (sender tx bytes) and
# RUN_NOTE (a short word on the run); run_case records them.

floor_run() {
  local group=239.255.77.1 port=7000 to i t0 tx0 bl0 tbf0
  to=$((20 + 4 * WIRE_S * (1 + RECEIVERS / 4)))
  rm -f "$W"/rcv*.out "$W"/rcv*.end
  for i in $(seq "$RECEIVERS"); do
    (
      timeout -k 5 $to ip netns exec "$(mt_recv_ns "$i")" env LD_PRELOAD="$W/lastrx.so" \
        "$W/rcv" $group $port > "$W/rcv$i.out" 2>&1 || true
      echo "$EPOCHREALTIME" > "$W/rcv$i.end"
    ) &
    MT_BG+=($!)
    disown
  done
  mt_wait_joined $group
  tx0=$(mt_tx_bytes) bl0=$(mt_backlog_drops) tbf0=$(mt_tbf_drops)
  t0=$EPOCHREALTIME
  mt_bounded $to ip netns exec $MT_S "$W/snd" $group $port "$NDGRAMS" "$DGRAM" "$PACE_BPS" > "$W/snd.out" || true
  for i in $(seq "$RECEIVERS"); do
    while [ ! -s "$W/rcv$i.end" ]; do sleep 0.1; done
  done
  RUN_TX=$(($(mt_tx_bytes) - tx0))
  # Per receiver: the kernel's arrival time of its last datagram (lastrx.so), datagrams got
  # (rcv's "got N in T s"), its exit time. The floor is the latest arrival less t0; the
  # estimate from the exit times (see the header) is kept beside it as a check.
  read -r RUN_S RUN_NOTE < <(for i in $(seq "$RECEIVERS"); do
    # (awk prints a number that it computed with %.6g: these stay strings.)
    echo "$(awk '/^last-rx/ {x = $2} END {print x == "" ? 0 : x}' "$W/rcv$i.out")" \
      "$(awk '/^got/ {x = $2} END {print x == "" ? 0 : x}' "$W/rcv$i.out")" "$(cat "$W/rcv$i.end")"
  done | awk -v t0="$t0" -v n="$(awk '{print $2}' "$W/snd.out")" -v snd="$(awk '{print $4}' "$W/snd.out")" \
    -v bl=$(($(mt_backlog_drops) - bl0)) -v tbf=$(($(mt_tbf_drops) - tbf0)) '
    { if ($1 == 0 || $2 == 0) bad++
      else { if ($1 > last) last = $1; e = $3 - 1 - ($2 % 64 ? 1 : 0); if (e > est) est = e }
      if (min == "" || $2 < min) min = $2 }
    END { printf "%s least-got=%d/%d(%.2f%%lost) snd=%ss exit-estimate=%.3fs backlog-drops=%d tbf-drops=%d\n",
      bad ? "-" : sprintf("%.3f", last - t0), min, n, n ? 100 * (1 - min / n) : 100, snd, est - t0, bl, tbf }')
  keep_logs "$W"/rcv*.out "$W"/rcv*.end "$W/snd.out"
  if [ "$RUN_S" = - ]; then
    RUN_S=
    echo "floor run failed: a receiver got nothing ($(head -c 300 "$W"/rcv*.out | tr '\n' ' '))" >&2
  fi
}

uftp_run() {
  local to i ns uid uids=() daemons=() buf t0 tx0 tbf0 bl0 rc=0 intact=0 pid
  to=$((60 + 20 * WIRE_S * (1 + RECEIVERS / 4)))
  # Socket buffers as large as uftp can have: it sets SO_RCVBUF/SO_SNDBUF (not the FORCE
  # variants), which net.core.rmem_max/wmem_max cap (4 MiB here, 8 MiB as the kernel doubles it;
  # the floor's rcv forces 16 MiB); its default is 256 KiB.
  buf=$(cat /proc/sys/net/core/rmem_max)
  [ "$buf" -gt 16777216 ] && buf=16777216
  [ "$buf" -lt 262144 ] && buf=262144
  rm -rf "$W/uftp" && mkdir -p "$W/uftp"
  for i in $(seq "$RECEIVERS"); do
    ns=$(mt_recv_ns "$i")
    uid=$(printf '0x%08X' $((0x0A4D0000 + 10 + i)))
    uids+=("$uid")
    mkdir -p "$W/uftp/r$i"
    # -q: no reverse DNS lookup of the sender; -c: a 20 MB write cache (uftpd(1): it matters
    # at gigabit speeds).
    timeout -k 5 $to ip netns exec "$ns" uftpd -d -q -I $MT_DEV -U "$uid" -B "$buf" -c 20971520 \
      -D "$W/uftp/r$i" > "$W/uftp/r$i.log" 2>&1 &
    MT_BG+=($!) daemons+=($!)
    disown
  done
  mt_wait_joined 230.4.4.1 # uftpd's default public group
  tx0=$(mt_tx_bytes) bl0=$(mt_backlog_drops) tbf0=$(mt_tbf_drops)
  t0=$EPOCHREALTIME
  # -s 50 (the most uftp allows; default 20): after each pass uftp sends DONE up to that many
  # times, 3 GRTT apart, and gives every receiver up for lost if no NAK or COMPLETE comes back in
  # that window ("Sending thread timed out", exit 9). On one machine the GRTT falls to its 10 ms
  # minimum, so the default window is 0.6 s, which a busy CPU overran in 2 runs of 3 at 200mbit;
  # answering receivers never wait for it, so it costs nothing when all goes well.
  mt_bounded $to ip netns exec $MT_S uftp -R $((PACE_BPS / 1000)) -b 1428 -s 50 -I $MT_DEV -B "$buf" \
    -H "$(IFS=,; echo "${uids[*]}")" -S "$W/uftp/status" "$W/file.bin" > "$W/uftp/uftp.log" 2>&1 || rc=$?
  RUN_S=$(awk -v t0="$t0" -v t1="$EPOCHREALTIME" 'BEGIN { printf "%.3f\n", t1 - t0 }')
  RUN_TX=$(($(mt_tx_bytes) - tx0))
  for i in $(seq "$RECEIVERS"); do
    cmp -s "$W/file.bin" "$W/uftp/r$i/file.bin" && intact=$((intact + 1))
  done
  # Stop the uftpds (timeout passes the TERM on) and wait for them: the next run's bind port 1044.
  for pid in "${daemons[@]}"; do mt_stop "$pid"; done
  # uftp's own transfer time (its STATS lines: after registration, to the last completion).
  RUN_NOTE="intact=$intact/$RECEIVERS uftp-exit=$rc uftp-stats-time=$(awk -F';' '$1 == "STATS" && $7 + 0 > m { m = $7 } END { print m + 0 }' "$W/uftp/status" 2> /dev/null)s"
  RUN_NOTE+=" passes=$(grep -c '^Starting pass' "$W/uftp/uftp.log" || true)"
  RUN_NOTE+=" backlog-drops=$(($(mt_backlog_drops) - bl0)) tbf-drops=$(($(mt_tbf_drops) - tbf0))"
  keep_logs "$W"/uftp/*.log "$W/uftp/status"
  if [ $rc -ne 0 ] || [ $intact -ne "$RECEIVERS" ]; then
    echo "uftp run failed (exit $rc, $intact/$RECEIVERS copies intact): $(tail -3 "$W/uftp/uftp.log")" >&2
    RUN_S=
  fi
  rm -rf "$W/uftp"
}

# ringblast_run / unicast_run: ringblast's multicast (serve --multicast, get --multicast) and,
# to compare, the same file by unicast to every receiver (what ringblast did before). The server
# runs in the sender; a warm-up unicast GET from receiver 1 (before the clock starts) has it scan
# the file at the path's datagram size. The clock starts as the receivers' `get`s start and
# stops when the last has verified its copy (multicast: the 200 ms gathering window included);
# every copy is compared with the file. RUN_NOTE: copies intact, the group's summary (repairs,
# feedback, members moved to unicast), datagrams fetched by unicast, fallbacks.
ringblast_run() { rb_run multicast; }
unicast_run() { rb_run unicast; }

rb_run() {
  local how=$1 to i ns pids=() t0 tx0 tbf0 bl0 srv intact=0 rc=0 mc=() pid
  to=$((60 + 10 * WIRE_S * (1 + RECEIVERS / 4)))
  rm -rf "$W/rb" && mkdir -p "$W/rb/files"
  ln "$W/file.bin" "$W/rb/files/file.bin"
  timeout -k 5 $to ip netns exec $MT_S "$BIN" serve --dir "$W/rb/files" --bind $MT_SADDR:6969 \
    --multicast 239.255.77.2:7002 --multicast-if $MT_SADDR --multicast-rate "$PACE_BPS" \
    ${GATHER:+--multicast-gather "$GATHER"} --json > "$W/rb/serve.json" 2> "$W/rb/serve.log" &
  srv=$!
  MT_BG+=("$srv")
  disown
  wait_server "$W/rb/serve.log"
  mt_bounded 60 ip netns exec "$(mt_recv_ns 1)" "$BIN" get file.bin --server $MT_SADDR:6969 \
    --discard --quiet --timeout 30 > /dev/null 2>&1 || true
  [ "$how" = multicast ] && mc=(--multicast)
  tx0=$(mt_tx_bytes) bl0=$(mt_backlog_drops) tbf0=$(mt_tbf_drops)
  t0=$EPOCHREALTIME
  for i in $(seq "$RECEIVERS"); do
    ns=$(mt_recv_ns "$i")
    mkdir -p "$W/rb/r$i"
    timeout -k 5 $to ip netns exec "$ns" "$BIN" get file.bin --server $MT_SADDR:6969 "${mc[@]}" \
      --out "$W/rb/r$i" --quiet --timeout 30 --json "$W/rb/r$i.json" > /dev/null 2> "$W/rb/r$i.err" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
  RUN_S=$(awk -v t0="$t0" -v t1="$EPOCHREALTIME" 'BEGIN { printf "%.3f\n", t1 - t0 }')
  RUN_TX=$(($(mt_tx_bytes) - tx0))
  for i in $(seq "$RECEIVERS"); do
    cmp -s "$W/file.bin" "$W/rb/r$i/file.bin" && intact=$((intact + 1))
  done
  # The group's summary is logged once its last GROUP_END went.
  for _ in $(seq 50); do
    grep -q 'members, ' "$W/rb/serve.log" && break
    [ "$how" = unicast ] && break
    sleep 0.1
  done
  mt_stop "$srv"
  RUN_NOTE="intact=$intact/$RECEIVERS"
  if [ "$how" = multicast ]; then
    RUN_NOTE+=" $(LOSSY=${LOSSY:-} SLOW=${SLOW:-} python3 - "$W/rb" "$RECEIVERS" << 'PY'
import json, re, sys
d, n = sys.argv[1], int(sys.argv[2])
uni = rebuilt = fallbacks = 0
for i in range(1, n + 1):
    try:
        c = json.load(open(f"{d}/r{i}.json"))["clients"][0]
    except Exception:
        continue
    m = c.get("multicast") or {}
    uni += m.get("unicast_datagrams", 0)
    late = m.get("first_block", 0)
    if late:
        print(f"late-joiner(r{i} from block {late})", end=" ")
    rebuilt += m.get("rebuilt", 0)
    fallbacks += 1 if m.get("fallback") or not m else 0
import os
odd = {int(x.split(":")[0]) for x in (os.environ.get("LOSSY", ""), os.environ.get("SLOW", "")) if x}
times = {}
for i in range(1, n + 1):
    try:
        times[i] = json.load(open(f"{d}/r{i}.json"))["clients"][0]["duration_s"]
    except Exception:
        pass
others = [t for i, t in times.items() if i not in odd]
if others:
    print("others-max=%.3fs others-median=%.3fs" % (max(others), sorted(others)[len(others) // 2]), end=" ")
for i in sorted(odd):
    if i in times:
        print("r%d=%.3fs" % (i, times[i]), end=" ")
line = next((l for l in open(f"{d}/serve.log") if "members, " in l), "")
g = re.search(r"(\d+) members, .*?(\d+) sources, (\d+) repairs \((\d+) proactive, (\d+) on feedback.*?(\d+) feedbacks read", line)
grp = "sources=%s repairs=%s(proactive %s) feedback=%s" % (g.group(2), g.group(3), g.group(4), g.group(6)) if g else "no-group-summary"
moved = len(re.findall("no more repairs for it", open(f"{d}/serve.log").read()))
print(f"{grp} rebuilt={rebuilt} unicast-datagrams={uni} moved-to-unicast={moved} fallbacks={fallbacks}")
PY
)"
  fi
  RUN_NOTE+=" backlog-drops=$(($(mt_backlog_drops) - bl0)) tbf-drops=$(($(mt_tbf_drops) - tbf0))"
  keep_logs "$W"/rb/*.log "$W"/rb/*.json "$W"/rb/*.err
  if [ $rc -ne 0 ] || [ $intact -ne "$RECEIVERS" ]; then
    echo "ringblast $how run failed (exit $rc, $intact/$RECEIVERS intact): $(cat "$W"/rb/r*.err | head -3)" >&2
    RUN_S=
  fi
  rm -rf "$W/rb"
}

# The share (%) of all CPUs busy over the next half second (/proc/stat: all but idle and iowait).
cpu_busy() {
  local a b
  a=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
  sleep 0.5
  b=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
  echo "$a $b" | awk '{ d = ($3 - $1) + ($4 - $2); printf "%.0f\n", d ? 100 * ($3 - $1) / d : 0 }'
}

# Waits (up to $QUIET_WAIT s) for the machine to be quiet (< 25% busy) before a run: a build on
# the same 2 cores halves the floor's rate. Sets BUSY, the share busy just before the run.
wait_quiet() {
  local deadline=$((SECONDS + QUIET_WAIT))
  BUSY=$(cpu_busy)
  while [ "$BUSY" -ge 25 ] && [ $SECONDS -lt $deadline ]; do BUSY=$(cpu_busy); done
}

RESULTS=$W/results.tsv
: > "$RESULTS"
# run_case NAME: $RUNS runs of NAME_run, each line to $RESULTS, and a line of the table.
run_case() {
  local name=$1 r secs=() txs=() notes=() fails=0
  for r in $(seq "$RUNS"); do
    sync
    wait_quiet
    RUN_CASE=$name RUN_NO=$r RUN_S='' RUN_TX=0 RUN_NOTE=''
    "${name}_run"
    RUN_NOTE+=" cpu-busy-before=$BUSY%"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$r" "${RUN_S:-}" "$RUN_TX" "$RUN_NOTE" >> "$RESULTS"
    if [ -n "$RUN_S" ]; then secs+=("$RUN_S"); else fails=$((fails + 1)); fi
    txs+=("$RUN_TX")
    notes+=("$RUN_NOTE")
  done
  local med=- rate=- tx
  if [ ${#secs[@]} -gt 0 ]; then
    med=$(printf '%s\n' "${secs[@]}" | median | xargs printf '%.3f')
    rate=$(awk -v b=$FILE_BYTES -v s="$med" 'BEGIN { printf "%.0f", b * 8 / s / 1e6 }')
  fi
  tx=$(printf '%s\n' "${txs[@]}" | median | xargs printf '%.0f')
  printf '%-10s %8s s %5s Mbit/s  runs: %-22s tx %11d B = %5.3f x file%s\n' "$name" "$med" "$rate" \
    "$(printf '%s ' "${secs[@]}")" "$tx" "$(awk -v t="$tx" -v b=$FILE_BYTES 'BEGIN { print t / b }')" \
    "$([ $fails -gt 0 ] && echo ", $fails FAILED")"
  printf '           %s\n' "${notes[@]}"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "testbed: $RECEIVERS receivers, sender link tbf $RATE (pace $((PACE_BPS / 1000000)) Mbit/s), loss $LOSS_PERMILLE/1000 per receiver; file $FILE_MIB MiB ($NDGRAMS x $DGRAM B); $RUNS runs each, medians"
for c in $CASES; do run_case "$c"; done

if [ -n "${JSON:-}" ]; then
  python3 - "$RESULTS" "$JSON" << EOF
import json, statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
cases = {}
for name, run, s, tx, note in rows:
    cases.setdefault(name, {"runs": []})["runs"].append(
        {"run": int(run), "seconds": float(s) if s else None, "tx_bytes": int(tx), "note": note})
for c in cases.values():
    ok = [r["seconds"] for r in c["runs"] if r["seconds"] is not None]
    c["median_s"] = statistics.median(ok) if ok else None
    c["median_tx_bytes"] = statistics.median(r["tx_bytes"] for r in c["runs"])
    c["failed_runs"] = len(c["runs"]) - len(ok)
json.dump({"config": {"receivers": $RECEIVERS, "file_bytes": $FILE_BYTES, "rate": "$RATE",
                      "rate_bps": $RATE_BPS, "pace_bps": $PACE_BPS, "loss_permille": $LOSS_PERMILLE,
                      "datagram_bytes": $DGRAM, "datagrams": $NDGRAMS, "runs": $RUNS,
                      "nproc": $(nproc), "kernel": "$(uname -r)"},
           "cases": cases}, open(sys.argv[2], "w"), indent=1)
EOF
  echo "JSON: $JSON"
fi
