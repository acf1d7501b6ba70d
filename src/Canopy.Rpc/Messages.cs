// The client RPC contract (protocol version 1)
// ============================================
//
// Clients (the CLI, the .NET SDK, other servers forwarding) talk to any server's --listen-addr. The connection opens
// with the 8-byte client hello "CNPC" + u16 version (1) + u16 reserved, answered by the server with the same 8 bytes
// (or closed: wrong magic or version). Then frames in both directions:
//
//   u32 length (LE, of what follows) · u8 kind (1 request, 2 response) · u64 request id (LE) · UTF-8 JSON body
//
// Requests carry a "method" and its arguments; a response carries the same request id and either a result or an
// error { code, message, leaseholder hint }. Requests on one connection may be answered out of order. Limits: a frame
// is at most 16 MiB; keys at most 4 KiB; values at most 8 MiB. Keys and values travel base64-encoded (JSON byte[]).
//
// Error codes (RpcErrorCode) are stable and typed; a client retries NotLeaseholder (at the hinted server, after
// refreshing its range cache), RangeNotFound and Unavailable; everything else is final for the request.
namespace Canopy.Rpc;

using System.Text.Json;
using System.Text.Json.Serialization;

/// <summary>Typed errors of the client RPC.</summary>
public enum RpcErrorCode
{
    /// <summary>Malformed request, unknown method, bad arguments. Final.</summary>
    BadRequest = 1,

    /// <summary>This server does not hold the lease of the range; see the hint. Retry there.</summary>
    NotLeaseholder = 2,

    /// <summary>No replica of the range here (or the range moved). Refresh the range cache and retry.</summary>
    RangeNotFound = 3,

    /// <summary>Temporarily unable to serve (no lease yet, election running, overloaded). Retry with backoff.</summary>
    Unavailable = 4,

    /// <summary>The cluster is not initialised yet (run `canopy init`).</summary>
    NotInitialized = 5,

    /// <summary>The write may or may not have happened (lost contact mid-commit). Do not blindly retry.</summary>
    Ambiguous = 6,

    /// <summary>The cluster is already initialised.</summary>
    AlreadyInitialized = 7,

    /// <summary>This server refuses to serve (e.g. its clock is too far from its peers'); the message says why.</summary>
    Refused = 8,

    /// <summary>A bug on the server side. Final.</summary>
    Internal = 9,

    /// <summary>
    /// The transaction was aborted or must restart (conflict, deadlock, uncertainty, a failed refresh, an expired
    /// heartbeat): nothing it wrote is visible. Retryable: run it again (RunTransactionAsync does). The message says why.
    /// </summary>
    TxnAborted = 10,

    /// <summary>A conditional write found another value than expected. Final for that request.</summary>
    ConditionFailed = 11,

    /// <summary>
    /// A change feed cursor is no longer valid here (the lease moved, the feed restarted, or the reader fell too far
    /// behind): register again (no cursor) from the last resolved timestamp.
    /// </summary>
    FeedRestart = 12,
}

/// <summary>An RPC request: a method name and its arguments.</summary>
public sealed record RpcRequest
{
    public required string Method { get; init; }

    public byte[]? Key { get; init; }

    public byte[]? EndKey { get; init; }

    public byte[]? Value { get; init; }

    public int Limit { get; init; }

    /// <summary>For Batch: puts (Value set) and deletes (Value null), all in one range, applied atomically.</summary>
    public IReadOnlyList<KvWrite>? Writes { get; init; }

    /// <summary>Range id for range-addressed methods.</summary>
    public ulong RangeId { get; init; }

    /// <summary>Free-form arguments of administrative methods.</summary>
    public Dictionary<string, string>? Args { get; init; }

    /// <summary>Client → gateway transaction methods: the session's transaction id.</summary>
    public string? TxnId { get; init; }

    /// <summary>Gateway → leaseholder transaction methods: the transaction (or, for a push, the pushee).</summary>
    public TxnMetaDto? Txn { get; init; }

    /// <summary>Push: the pushing transaction (null: a non-transactional request).</summary>
    public TxnMetaDto? Pusher { get; init; }

    /// <summary>Method-specific mode (txn write: intent | stage | onephase; push: timestamp | abort; end: commit | abort).</summary>
    public string? Mode { get; init; }

    /// <summary>Stage: the writes the STAGING record lists (status recovery checks each).</summary>
    public IReadOnlyList<byte[]>? InFlight { get; init; }

    /// <summary>Every key the transaction wrote (the record keeps them for resolution).</summary>
    public IReadOnlyList<byte[]>? LockKeys { get; init; }

    /// <summary>txn_get_many: the keys to read (at most 10,000).</summary>
    public IReadOnlyList<byte[]>? Keys { get; init; }

    /// <summary>Push: the transactions waiting on the pusher (deadlock detection).</summary>
    public IReadOnlyList<string>? Deps { get; init; }

    /// <summary>A timestamp argument ("wall.logical"): push-to, resolve/commit timestamp, refresh upper bound, query bound.</summary>
    public string? Timestamp { get; init; }

    /// <summary>Refresh: the lower bound (exclusive).</summary>
    public string? FromTimestamp { get; init; }

    /// <summary>Conditional put: the expected current value (null: expected absent).</summary>
    public byte[]? Expected { get; init; }

    /// <summary>
    /// A method-specific switch: onephase write: the transaction read nothing, so it may commit above its timestamp;
    /// end abort: the coordinator may abort its own STAGING record (it knows it never was implicitly committed).
    /// (Begin options travel in <see cref="Args"/>: parallel_commits, one_phase, pipeline, priority.)
    /// </summary>
    public bool? Flag { get; init; }
}

/// <summary>A transaction as it travels between servers (timestamps as "wall.logical").</summary>
public sealed record TxnMetaDto
{
    public required string Id { get; init; }

    public int Epoch { get; init; }

    public required string ReadTs { get; init; }

    public required string WriteTs { get; init; }

    public required string MinTs { get; init; }

    public uint Priority { get; init; }

    public required byte[] Anchor { get; init; }
}

/// <summary>One write of a batch: a put when <see cref="Value"/> is set, else a delete.</summary>
public sealed record KvWrite(byte[] Key, byte[]? Value)
{
    /// <summary>Transactional writes: the write's sequence number within its transaction (a later write of the same
    /// key has a higher one; a delayed or retried older write never overwrites a newer intent).</summary>
    public int Seq { get; init; }
}

/// <summary>An RPC error.</summary>
public sealed record RpcError(RpcErrorCode Code, string Message, ulong LeaseholderHint = 0, string? LeaseholderAddress = null);

/// <summary>An RPC response: exactly one of <see cref="Error"/> or a result.</summary>
public sealed record RpcResponse
{
    public RpcError? Error { get; init; }

    public byte[]? Value { get; init; }

    /// <summary>HLC timestamp of the read or write, as "wall.logical".</summary>
    public string? Timestamp { get; init; }

    public bool Found { get; init; }

    public IReadOnlyList<KvPair>? Rows { get; init; }

    public IReadOnlyList<RangeInfo>? Ranges { get; init; }

    public IReadOnlyList<NodeInfo>? Nodes { get; init; }

    /// <summary>The range that served the request (lets a client fill its cache).</summary>
    public RangeInfo? Range { get; init; }

    public Dictionary<string, string>? Info { get; init; }

    /// <summary>Transaction methods: the transaction as the server now knows it (e.g. pushed write timestamp).</summary>
    public TxnMetaDto? Txn { get; init; }

    /// <summary>Push / query: the pushee's status (pending, staging, committed, aborted) or the push outcome
    /// (pushed, wait, recover, abort_pusher).</summary>
    public string? Status { get; init; }

    /// <summary>Push of a STAGING record: the writes it lists (for status recovery).</summary>
    public IReadOnlyList<byte[]>? InFlight { get; init; }

    /// <summary>The record's lock keys (for resolution by whoever finalises it).</summary>
    public IReadOnlyList<byte[]>? LockKeys { get; init; }

    /// <summary>Deps query: the transactions waiting on the asked one.</summary>
    public IReadOnlyList<string>? Deps { get; init; }

    /// <summary>txn_get_many: one value per key asked, in order (null: absent).</summary>
    public IReadOnlyList<byte[]?>? Values { get; init; }

    /// <summary>Range feed: committed versions (not in timestamp order; duplicates possible).</summary>
    public IReadOnlyList<KvEvent>? Events { get; init; }

    public static RpcResponse Fail(RpcErrorCode code, string message, ulong hint = 0, string? hintAddress = null) =>
        new() { Error = new RpcError(code, message, hint, hintAddress) };
}

/// <summary>A key and its value.</summary>
public sealed record KvPair(byte[] Key, byte[] Value);

/// <summary>A committed version seen by a range feed: key, timestamp ("wall.logical") and value (null: a deletion).</summary>
public sealed record KvEvent(byte[] Key, string Ts, byte[]? Value);

/// <summary>What a server knows of one range (its local replica's view).</summary>
public sealed record RangeInfo
{
    public ulong RangeId { get; init; }

    /// <summary>First key (inclusive); empty = the start of the key space.</summary>
    public byte[] StartKey { get; init; } = [];

    /// <summary>End key (exclusive); null = the end of the key space.</summary>
    public byte[]? EndKey { get; init; }

    public ulong[] Replicas { get; init; } = [];

    /// <summary>Node id of the current leaseholder as this server sees it (0 = none/unknown).</summary>
    public ulong Leaseholder { get; init; }

    public string? LeaseholderAddress { get; init; }

    public string? LeaseExpiration { get; init; }

    public ulong RaftLeader { get; init; }

    public ulong Term { get; init; }

    public ulong AppliedIndex { get; init; }

    public bool Contains(byte[] key) =>
        KeyOrder.Compare(key, StartKey) >= 0 && (EndKey is null || KeyOrder.Compare(key, EndKey) < 0);
}

/// <summary>What a server knows of one cluster member.</summary>
public sealed record NodeInfo
{
    public ulong NodeId { get; init; }

    public string Address { get; init; } = string.Empty;

    public string? HttpAddress { get; init; }

    /// <summary>As seen by the answering server: "self", "up", "suspect" (silent too long) or "down".</summary>
    public string State { get; init; } = "unknown";

    public int Replicas { get; init; }

    public int Leases { get; init; }
}

/// <summary>Unsigned lexicographic order of keys.</summary>
public static class KeyOrder
{
    public static int Compare(ReadOnlySpan<byte> a, ReadOnlySpan<byte> b) => a.SequenceCompareTo(b) switch
    {
        < 0 => -1,
        > 0 => 1,
        _ => 0,
    };
}

/// <summary>JSON settings of the RPC bodies (snake_case, no nulls).</summary>
public static class RpcJson
{
    public static JsonSerializerOptions Options { get; } = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
    };
}

/// <summary>Method names.</summary>
public static class RpcMethods
{
    public const string Get = "get";
    public const string Put = "put";
    public const string Delete = "delete";
    public const string Scan = "scan";
    public const string Batch = "batch";
    public const string RangeLookup = "range_lookup";
    public const string ListRanges = "list_ranges";
    public const string NodeStatus = "node_status";
    public const string Init = "init";
    public const string Ping = "ping";

    // Client → gateway: a transaction session, coordinated by the gateway (DESIGN §8).
    public const string TxnBegin = "txn_begin";
    public const string TxnGet = "txn_get";
    public const string TxnGetMany = "txn_get_many";
    public const string TxnWriteMany = "txn_write_many";
    public const string TxnScan = "txn_scan";
    public const string TxnPut = "txn_put";
    public const string TxnDelete = "txn_delete";
    public const string TxnConditionalPut = "txn_cput";
    public const string TxnCommit = "txn_commit";
    public const string TxnRollback = "txn_rollback";

    // Gateway → leaseholder (and server → server): the transaction protocol's per-range requests.
    public const string KvTxnRead = "kv_txn_read";
    public const string KvTxnWrite = "kv_txn_write";
    public const string KvTxnEnd = "kv_txn_end";
    public const string KvTxnHeartbeat = "kv_txn_heartbeat";
    public const string KvTxnPush = "kv_txn_push";
    public const string KvTxnDeps = "kv_txn_deps";
    public const string KvTxnRecover = "kv_txn_recover";
    public const string KvResolve = "kv_resolve";
    public const string KvQueryIntent = "kv_query_intent";
    public const string KvRefresh = "kv_refresh";

    // Change feeds (docs/subscriptions.md): long-polled reads of a range's committed changes at its leaseholder.
    public const string RangeFeed = "rangefeed";
}
