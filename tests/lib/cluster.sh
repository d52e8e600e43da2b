# tests/lib/cluster.sh — the three-node set-up that tests/cluster-e2e.sh
# and soak/run.sh share (sourced).  Nodes A and C run in this namespace,
# B in its own behind a veth pair, so that cutting B's link is a real
# network fault.  The caller sets T (work directory), BUILD, NS, VR, VB,
# IPA and IPB, and declares the array node_pid.

# cluster_net: B's namespace and the veth to it.  On failure says why and
# returns 1 (the caller skips: no network namespaces here).
cluster_net () {
  ip netns add "$NS" || { echo "cannot create a network namespace"; return 1; }
  ip link add "$VR" type veth peer name "$VB" \
    || { echo "cannot create a veth pair"; return 1; }
  ip link set "$VB" netns "$NS"
  ip addr add "$IPA/24" dev "$VR"
  ip link set "$VR" up
  ip -n "$NS" addr add "$IPB/24" dev "$VB"
  ip -n "$NS" link set "$VB" up
  ip -n "$NS" link set lo up
}

# cluster_conf NODE ADDRESS REGISTRY LOCAL_TCP ATTACHED: write $T/NODE.conf.
# REGISTRY is the [registry] section's lines; LOCAL_TCP a host:port for
# the node's local NBD server over TCP, or empty; ATTACHED yes puts the
# disks $T/bus/disk*.img on the node's port B.  Short timeouts, so that
# faults are seen and failed over within a test's time.
cluster_conf () {
  {
    printf '[node]\nname = %s\n[listen]\naddress = %s\ntls = off\n' "$1" "$2"
    printf '[registry]\n%s\n[cluster]\nlocal-socket = %s\nstate-file = %s\n' "$3" "$T/$1.sock" "$T/$1.state.json"
    [ -n "$4" ] && printf 'local-tcp = %s\n' "$4"
    cat <<EOC
fault-dir = $T/faults-$1
request-timeout-ms = 500
checker-interval-ms = 200
failback-ms = 1000
deadline-ms = 500
direct-wait-ms = 1000
devices = none
[control]
socket = $T/$1.ctl
EOC
    [ "$5" = yes ] && printf '[port B]\nalloclass = 4\nglob = %s\n' "$T/bus/disk*.img"
  } > "$T/$1.conf"
}

# cluster_start NODE: start the node's altpathd (B in its namespace), its
# log appended to $T/NODE.log; its pid in node_pid[NODE].
cluster_start () {
  local n=$1
  echo "---- start $(date -u +%T.%N)" >> "$T/$n.log"
  if [ "$n" = B ]; then
    ip netns exec "$NS" "$BUILD/altpathd" --config "$T/B.conf" >> "$T/B.log" 2>&1 &
  else
    "$BUILD/altpathd" --config "$T/$n.conf" >> "$T/$n.log" 2>&1 &
  fi
  node_pid[$n]=$!
}
