# Hosts on one machine for the benchmarks (sourced by netns.sh and bottleneck.sh): a server
# and a client network namespace joined by a veth pair of MTU $MTU, or with ROUTER=1 a router
# namespace between them; with RATE set, `tc tbf` shapes the link (on the router's egress
# towards the client: a switch port, the sender feels no backpressure; without a router, on
# the server's own egress). Sets S, C, R (namespaces), SV4, CV4, SV6, CV6 (addresses), WORK
# (a temporary directory), and removes everything on exit, Ctrl-C included.
# Inputs: MTU, ROUTER, RATE, QUEUE (tbf latency, default 50ms), BURST (tbf bucket, default 256kb).
TAG=rbb$$
S=${TAG}s C=${TAG}c R=${TAG}r
WORK=$(mktemp -d)
cleanup() {
  for ns in $S $C $R; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

SV4=10.78.1.1 CV4=10.78.2.2 SV6=fd78:1::1 CV6=fd78:2::2
ip netns add $S; ip netns add $C
if [ -n "$ROUTER" ]; then
  ip netns add $R
  ip link add ${TAG}sa netns $S type veth peer name ${TAG}rs netns $R
  ip link add ${TAG}ca netns $C type veth peer name ${TAG}rc netns $R
  ip -n $R link set lo up
  ip -n $R link set ${TAG}rs mtu "$MTU" up; ip -n $R link set ${TAG}rc mtu "$MTU" up
  ip -n $R addr add 10.78.1.254/24 dev ${TAG}rs; ip -n $R addr add 10.78.2.254/24 dev ${TAG}rc
  ip -n $R -6 addr add fd78:1::fe/64 dev ${TAG}rs nodad; ip -n $R -6 addr add fd78:2::fe/64 dev ${TAG}rc nodad
  ip netns exec $R sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
  SDEV=${TAG}sa CDEV=${TAG}ca
  SHAPED="$R ${TAG}rc"
else
  ip link add ${TAG}sa netns $S type veth peer name ${TAG}ca netns $C
  SDEV=${TAG}sa CDEV=${TAG}ca
  SHAPED="$S ${TAG}sa"
  CV4=10.78.1.2 CV6=fd78:1::2
fi
for ns in $S $C; do ip -n $ns link set lo up; done
ip -n $S link set $SDEV mtu "$MTU" up; ip -n $C link set $CDEV mtu "$MTU" up
ip -n $S addr add $SV4/24 dev $SDEV; ip -n $S -6 addr add $SV6/64 dev $SDEV nodad
ip -n $C addr add $CV4/24 dev $CDEV; ip -n $C -6 addr add $CV6/64 dev $CDEV nodad
if [ -n "$ROUTER" ]; then
  ip -n $S route add default via 10.78.1.254; ip -n $C route add default via 10.78.2.254
  ip -n $S -6 route add default via fd78:1::fe; ip -n $C -6 route add default via fd78:2::fe
fi
if [ -n "$RATE" ]; then
  # shellcheck disable=SC2086
  set -- $SHAPED
  ip netns exec "$1" tc qdisc add dev "$2" root tbf rate "$RATE" burst "${BURST:-256kb}" latency "${QUEUE:-50ms}"
fi

