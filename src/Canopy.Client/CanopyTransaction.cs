namespace Canopy.Client;

using Canopy.Rpc;

/// <summary>The three outcomes of a transaction (DESIGN §8).</summary>
public enum TransactionOutcome
{
    /// <summary>Committed: every write is durable and visible from <see cref="TransactionResult.CommitTimestamp"/> on.</summary>
    Committed,

    /// <summary>Aborted: nothing it wrote is or will become visible. <see cref="TransactionResult.Retryable"/> says whether running it again may succeed.</summary>
    Aborted,

    /// <summary>The commit may or may not have happened (contact was lost mid-commit). Do not blindly retry.</summary>
    Ambiguous,
}

/// <summary>How a transaction ended.</summary>
/// <param name="Outcome">Committed, aborted or ambiguous.</param>
/// <param name="Reason">Why it aborted or is ambiguous.</param>
/// <param name="CommitTimestamp">Committed: the HLC commit timestamp ("wall.logical").</param>
/// <param name="Attempts">How many times the body ran (RunTransactionAsync retries retryable aborts).</param>
/// <param name="Retryable">Aborted: a new attempt may succeed (conflict, deadlock, refresh failure).</param>
public sealed record TransactionResult(TransactionOutcome Outcome, string? Reason, string? CommitTimestamp, int Attempts, bool Retryable = false)
{
    public bool IsCommitted => Outcome == TransactionOutcome.Committed;
}

/// <summary>Priority classes of transactions.</summary>
public enum TransactionPriority
{
    Low,
    Normal,
    High,
}

/// <summary>Switches of one transaction.</summary>
public sealed record TransactionOptions
{
    /// <summary>Parallel commits (one round of consensus); off: classic two-phase commit (benchmarks, tests).</summary>
    public bool ParallelCommits { get; init; } = true;

    /// <summary>One-phase commit when every write lands on one range.</summary>
    public bool OnePhase { get; init; } = true;

    /// <summary>Send each write at once as a pipelined intent instead of buffering it until commit.</summary>
    public bool PipelineWrites { get; init; }

    /// <summary>
    /// Priority class: a high-priority transaction never waits for others (it aborts a conflicting writer or pushes a
    /// conflicting transaction's timestamp); a low-priority one never makes others wait. Normal ones wait for each other.
    /// </summary>
    public TransactionPriority Priority { get; init; } = TransactionPriority.Normal;

    /// <summary>Attempts of RunTransactionAsync before it gives up on retryable aborts.</summary>
    public int MaxAttempts { get; init; } = 20;

    /// <summary>Deadline of a commit request (it may wait on conflicting transactions and settle unclear outcomes).</summary>
    public TimeSpan CommitTimeout { get; init; } = TimeSpan.FromSeconds(60);
}

/// <summary>The transaction must restart: it was aborted (conflict, deadlock, failed refresh). Thrown by reads and writes.</summary>
public sealed class CanopyTransactionAbortedException(string message) : CanopyException(message);

/// <summary>A conditional put found another value than expected.</summary>
public sealed class CanopyConditionFailedException(string message, byte[]? actual) : CanopyException(message)
{
    /// <summary>The value found (null: none).</summary>
    public byte[]? Actual { get; } = actual;
}

/// <summary>
/// A serializable transaction, coordinated by one server (the gateway this client picked at begin). Reads see the
/// transaction's own writes; writes stay invisible to others until commit. One operation at a time.
/// </summary>
public sealed class CanopyTransaction : IAsyncDisposable
{
    private readonly CanopyClient _client;
    private readonly string _gateway;
    private readonly TransactionOptions _options;
    private bool _ended;

    internal CanopyTransaction(CanopyClient client, string gateway, string id, TransactionOptions options, string? readTimestamp = null)
    {
        _client = client;
        _gateway = gateway;
        Id = id;
        _options = options;
        ReadTimestamp = readTimestamp;
    }

    /// <summary>The HLC timestamp ("wall.logical") the transaction started reading at (it may move up with refreshes).</summary>
    public string? ReadTimestamp { get; }

    /// <summary>The transaction id.</summary>
    public string Id { get; }

    /// <summary>The server coordinating it.</summary>
    public string Gateway => _gateway;

    public async Task<byte[]?> GetAsync(byte[] key, CancellationToken ct = default)
    {
        var r = await CallAsync(new RpcRequest { Method = RpcMethods.TxnGet, TxnId = Id, Key = key }, ct).ConfigureAwait(false);
        return r.Found ? r.Value ?? [] : null;
    }

    public async Task<IReadOnlyList<KvPair>> ScanAsync(byte[] start, byte[]? end, int limit = 0, CancellationToken ct = default)
    {
        var r = await CallAsync(new RpcRequest { Method = RpcMethods.TxnScan, TxnId = Id, Key = start, EndKey = end, Limit = limit }, ct).ConfigureAwait(false);
        return r.Rows ?? [];
    }

    /// <summary>The values of <paramref name="keys"/> (null: absent), read in one request (the server reads them in parallel).</summary>
    public async Task<IReadOnlyList<byte[]?>> GetManyAsync(IReadOnlyList<byte[]> keys, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(keys);
        if (keys.Count == 0)
        {
            return [];
        }

        var r = await CallAsync(new RpcRequest { Method = RpcMethods.TxnGetMany, TxnId = Id, Keys = keys }, ct).ConfigureAwait(false);
        var values = r.Values ?? [];
        if (values.Count != keys.Count)
        {
            throw new CanopyRpcException(RpcErrorCode.Internal, $"txn_get_many answered {values.Count} values for {keys.Count} keys");
        }

        return values;
    }

    /// <summary>Puts (Value set) and deletes (Value null) in one request; like as many PutAsync/DeleteAsync calls in order.</summary>
    public async Task WriteManyAsync(IReadOnlyList<KvWrite> writes, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(writes);
        if (writes.Count > 0)
        {
            await CallAsync(new RpcRequest { Method = RpcMethods.TxnWriteMany, TxnId = Id, Writes = writes }, ct).ConfigureAwait(false);
        }
    }

    public Task PutAsync(byte[] key, byte[] value, CancellationToken ct = default) =>
        CallAsync(new RpcRequest { Method = RpcMethods.TxnPut, TxnId = Id, Key = key, Value = value }, ct);

    public Task DeleteAsync(byte[] key, CancellationToken ct = default) =>
        CallAsync(new RpcRequest { Method = RpcMethods.TxnDelete, TxnId = Id, Key = key }, ct);

    /// <summary>Writes <paramref name="value"/> if the key holds <paramref name="expected"/> (null: absent).</summary>
    /// <exception cref="CanopyConditionFailedException">It holds something else (the transaction stays usable).</exception>
    public Task ConditionalPutAsync(byte[] key, byte[] value, byte[]? expected, CancellationToken ct = default) =>
        CallAsync(new RpcRequest { Method = RpcMethods.TxnConditionalPut, TxnId = Id, Key = key, Value = value, Expected = expected }, ct);

    /// <summary>Commits. Never throws for the protocol's outcomes: they are the result.</summary>
    public async Task<TransactionResult> CommitAsync(CancellationToken ct = default)
    {
        if (_ended)
        {
            throw new InvalidOperationException("the transaction already ended");
        }

        _ended = true;
        RpcResponse r;
        try
        {
            r = await _client.CallServerAsync(_gateway, new RpcRequest { Method = RpcMethods.TxnCommit, TxnId = Id }, _options.CommitTimeout, ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is CanopyUnavailableException or TimeoutException)
        {
            return new TransactionResult(TransactionOutcome.Ambiguous, $"lost contact with the gateway {_gateway} during commit: {e.Message}", null, 1);
        }

        // Only the gateway's definite answers are aborts; anything unexpected during a commit (an internal error, a
        // refusal half-way) leaves the outcome unknown (txn-pitfalls 5).
        return r.Error switch
        {
            null => new TransactionResult(TransactionOutcome.Committed, null, r.Timestamp, 1),
            { Code: RpcErrorCode.TxnAborted } e => new TransactionResult(TransactionOutcome.Aborted, e.Message, null, 1, Retryable: true),
            { Code: RpcErrorCode.BadRequest } e => new TransactionResult(TransactionOutcome.Aborted, e.Message, null, 1, Retryable: false),
            var e => new TransactionResult(TransactionOutcome.Ambiguous, $"{e.Code}: {e.Message}", null, 1),
        };
    }

    /// <summary>Rolls back (nothing it wrote becomes visible). No-op once ended.</summary>
    public async Task RollbackAsync(CancellationToken ct = default)
    {
        if (_ended)
        {
            return;
        }

        _ended = true;
        try
        {
            await _client.CallServerAsync(_gateway, new RpcRequest { Method = RpcMethods.TxnRollback, TxnId = Id }, TimeSpan.FromSeconds(5), ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is CanopyException or TimeoutException)
        {
            // The gateway rolls back idle transactions itself; heartbeats stop and others abort it after expiry.
        }
    }

    public async ValueTask DisposeAsync() => await RollbackAsync().ConfigureAwait(false);

    private async Task<RpcResponse> CallAsync(RpcRequest request, CancellationToken ct)
    {
        if (_ended)
        {
            throw new InvalidOperationException("the transaction already ended");
        }

        RpcResponse r;
        try
        {
            r = await _client.CallServerAsync(_gateway, request, _client.Options.RequestTimeout, ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is CanopyUnavailableException or TimeoutException)
        {
            _ended = true;
            throw new CanopyTransactionAbortedException($"lost contact with the gateway {_gateway}: {e.Message}");
        }

        switch (r.Error)
        {
            case null:
                return r;
            case { Code: RpcErrorCode.TxnAborted } e:
                _ended = true;
                throw new CanopyTransactionAbortedException(e.Message);
            case { Code: RpcErrorCode.ConditionFailed } e:
                throw new CanopyConditionFailedException(e.Message, r.Found ? r.Value ?? [] : null);
            case var e:
                throw new CanopyRpcException(e.Code, e.Message, _gateway);
        }
    }
}
