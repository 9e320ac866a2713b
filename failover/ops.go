package failover

// ConsulOp names one kind of Consul request the coordinator makes. Its string is the
// "operation" label of qslice_consul_request_errors_total and the key of Status.ConsulErrors;
// the collector, the alerting rules' tests and the coordinator's tests use these constants, so
// a name that no code emits cannot creep in.
type ConsulOp string

// The Consul operations, in the order of ConsulOps.
const (
	OpRegister       ConsulOp = "register"        // register the service and its checks (also: list, remove stale checks)
	OpCheckTTL       ConsulOp = "check_ttl"       // pass the alive check or a queue check
	OpSessionCreate  ConsulOp = "session_create"  // create the node's session
	OpSessionInfo    ConsulOp = "session_info"    // confirm the session with a consistent read (adopting one: also read the local agent's checks, for its node name)
	OpSessionDestroy ConsulOp = "session_destroy" // destroy a session (ours on stop, or a previous run's)
	OpSessionCleanup ConsulOp = "session_cleanup" // list the sessions of our agent's node
	OpKVWatch        ConsulOp = "kv_watch"        // blocking query on the slice locks
	OpMemberWatch    ConsulOp = "member_watch"    // blocking query on the service's health
	OpAcquire        ConsulOp = "acquire"         // lock transaction of one slice
	OpRelease        ConsulOp = "release"         // unlock transaction of one slice
	OpDeregister     ConsulOp = "deregister"      // remove the service on stop
	OpMemberKey      ConsulOp = "member_key"      // write the node's member key (held with its session)
	OpInbox          ConsulOp = "inbox"           // scoped layout: tell a peer which member keys to read, or clear our inbox
	OpFullRead       ConsulOp = "full_read"       // scoped layout: read every slice and member key (or the ones a peer named)
)

var opDescriptions = map[ConsulOp]string{
	OpRegister: "register service", OpCheckTTL: "update TTL check", OpSessionCreate: "create session",
	OpSessionInfo: "confirm session", OpSessionDestroy: "destroy session", OpSessionCleanup: "list stale sessions",
	OpKVWatch: "watch slice locks", OpMemberWatch: "watch members", OpAcquire: "acquire slice lock",
	OpRelease: "release slice lock", OpDeregister: "deregister service", OpMemberKey: "write member key",
	OpInbox: "write inbox key", OpFullRead: "read all keys",
}

// ConsulOps lists every operation, for collectors that export a zero for each.
func ConsulOps() []ConsulOp {
	return []ConsulOp{OpRegister, OpCheckTTL, OpSessionCreate, OpSessionInfo, OpSessionDestroy, OpSessionCleanup,
		OpKVWatch, OpMemberWatch, OpAcquire, OpRelease, OpDeregister, OpMemberKey, OpInbox, OpFullRead}
}

func (o ConsulOp) String() string { return string(o) }

// Description is the operation in words, for error messages ("acquire slice lock").
func (o ConsulOp) Description() string {
	if d, ok := opDescriptions[o]; ok {
		return d
	}
	return string(o)
}

// Blocking reports whether the operation is a blocking query (its timeout is its wait).
func (o ConsulOp) Blocking() bool { return o == OpKVWatch || o == OpMemberWatch }
