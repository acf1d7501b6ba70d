// The scene tree (src/Canopy.Tree) on a server: ITreeTxn over the in-process handler's coordinator sessions
// (txn_begin → txn_get/txn_scan/txn_put/txn_delete → txn_commit/txn_rollback), and a runner retrying retryable aborts
// the way CanopyClient.RunTransactionAsync does.
namespace Canopy.Gateway;

using Canopy.Client;
using Canopy.Rpc;
using Canopy.Tree;

/// <summary>A transaction op answered with an error that is not an abort (mapped to a gateway error code).</summary>
public sealed class GatewayRpcException(RpcError error)
    : Exception($"{error.Code}: {error.Message}")
{
    public RpcError Error { get; } = error;
}

/// <summary><see cref="ITreeTxn"/> over one coordinator session of the server's in-process handler. One op at a time.</summary>
public sealed class GatewayTreeTxn : ITreeTxn, ITreeTxnBatch
{
    private readonly Func<RpcRequest, CancellationToken, Task<RpcResponse>> _handler;

    private GatewayTreeTxn(Func<RpcRequest, CancellationToken, Task<RpcResponse>> handler, string id)
    {
        _handler = handler;
        Id = id;
    }

    /// <summary>The coordinator's transaction id.</summary>
    public string Id { get; }

    /// <summary>The transaction ended (committed, rolled back, or aborted by an op).</summary>
    public bool Ended { get; private set; }

    /// <summary>Begins a transaction. Throws <see cref="GatewayRpcException"/> when the server refuses.</summary>
    public static async Task<GatewayTreeTxn> BeginAsync(Func<RpcRequest, CancellationToken, Task<RpcResponse>> handler, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(handler);
        var r = await handler(new RpcRequest { Method = RpcMethods.TxnBegin }, ct).ConfigureAwait(false);
        if (r.Error is { } e)
        {
            throw new GatewayRpcException(e);
        }

        var id = r.Info?.GetValueOrDefault("txn_id") ?? throw new GatewayRpcException(new RpcError(RpcErrorCode.Internal, "the server began no transaction"));
        return new GatewayTreeTxn(handler, id);
    }

    public async Task<byte[]?> GetAsync(byte[] key, CancellationToken ct = default)
    {
        var r = await CallAsync(new RpcRequest { Method = RpcMethods.TxnGet, TxnId = Id, Key = key }, ct).ConfigureAwait(false);
        return r.Found ? r.Value ?? [] : null;
    }

    public async Task<IReadOnlyList<TreeKv>> ScanAsync(byte[] start, byte[] end, int limit = 0, CancellationToken ct = default)
    {
        var r = await CallAsync(new RpcRequest { Method = RpcMethods.TxnScan, TxnId = Id, Key = start, EndKey = end, Limit = limit }, ct).ConfigureAwait(false);
        return [.. (r.Rows ?? []).Select(row => new TreeKv(row.Key, row.Value))];
    }

    public async Task<byte[]?[]> GetManyAsync(IReadOnlyList<byte[]> keys, CancellationToken ct = default)
    {
        var r = await CallAsync(new RpcRequest { Method = RpcMethods.TxnGetMany, TxnId = Id, Keys = keys }, ct).ConfigureAwait(false);
        return [.. r.Values ?? []];
    }

    public Task WriteManyAsync(IReadOnlyList<(byte[] Key, byte[]? Value)> writes, CancellationToken ct = default) =>
        CallAsync(new RpcRequest { Method = RpcMethods.TxnWriteMany, TxnId = Id, Writes = writes.Select(w => new KvWrite(w.Key, w.Value)).ToList() }, ct);

    public Task PutAsync(byte[] key, byte[] value, CancellationToken ct = default) =>
        CallAsync(new RpcRequest { Method = RpcMethods.TxnPut, TxnId = Id, Key = key, Value = value }, ct);

    public Task DeleteAsync(byte[] key, CancellationToken ct = default) =>
        CallAsync(new RpcRequest { Method = RpcMethods.TxnDelete, TxnId = Id, Key = key }, ct);

    /// <summary>Commits. The protocol's outcomes are the result (as <see cref="CanopyTransaction.CommitAsync"/> maps them).</summary>
    public async Task<TransactionResult> CommitAsync(CancellationToken ct)
    {
        if (Ended)
        {
            throw new InvalidOperationException("the transaction already ended");
        }

        Ended = true;
        RpcResponse r;
        try
        {
            r = await _handler(new RpcRequest { Method = RpcMethods.TxnCommit, TxnId = Id }, ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // Never report a commit that may have happened as failed.
            return new TransactionResult(TransactionOutcome.Ambiguous, $"the commit did not answer: {e.Message}", null, 1);
        }

        return r.Error switch
        {
            null => new TransactionResult(TransactionOutcome.Committed, null, r.Timestamp, 1),
            { Code: RpcErrorCode.TxnAborted } e => new TransactionResult(TransactionOutcome.Aborted, e.Message, null, 1, Retryable: true),
            { Code: RpcErrorCode.BadRequest } e => new TransactionResult(TransactionOutcome.Aborted, e.Message, null, 1, Retryable: false),
            var e => new TransactionResult(TransactionOutcome.Ambiguous, $"{e.Code}: {e.Message}", null, 1),
        };
    }

    /// <summary>Rolls back (best effort; no-op once ended).</summary>
    public async Task RollbackAsync()
    {
        if (Ended)
        {
            return;
        }

        Ended = true;
        try
        {
            await _handler(new RpcRequest { Method = RpcMethods.TxnRollback, TxnId = Id }, CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // The server's idle sweep rolls back what this misses.
        }
    }

    /// <summary>
    /// A runner over <paramref name="handler"/>: begins, runs the body, commits; a retryable abort (from an op or the
    /// commit) runs it again, at most <paramref name="maxAttempts"/> times, with a short random backoff. An exception
    /// from the body rolls the transaction back and propagates.
    /// </summary>
    public static TreeTxnRunner Runner(Func<RpcRequest, CancellationToken, Task<RpcResponse>> handler, int maxAttempts = 20)
    {
        ArgumentNullException.ThrowIfNull(handler);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxAttempts, 1);
        return async (body, ct) =>
        {
            ArgumentNullException.ThrowIfNull(body);
            TransactionResult? last = null;
            for (var attempt = 1; attempt <= maxAttempts; attempt++)
            {
                ct.ThrowIfCancellationRequested();
                var txn = await BeginAsync(handler, ct).ConfigureAwait(false);
                try
                {
                    await body(txn).ConfigureAwait(false);
                    last = await txn.CommitAsync(ct).ConfigureAwait(false) with { Attempts = attempt };
                }
                catch (GatewayTxnAbortedException e)
                {
                    last = new TransactionResult(TransactionOutcome.Aborted, e.Message, null, attempt, Retryable: true);
                }
                finally
                {
                    await txn.RollbackAsync().ConfigureAwait(false);
                }

                if (last.Outcome != TransactionOutcome.Aborted || !last.Retryable)
                {
                    return last;
                }

                var ceiling = 10 << Math.Min(attempt, 5); // 20 ms .. 320 ms
                await Task.Delay(TimeSpan.FromMilliseconds(Random.Shared.Next(ceiling / 2, ceiling)), ct).ConfigureAwait(false);
            }

            return last!;
        };
    }

    private async Task<RpcResponse> CallAsync(RpcRequest request, CancellationToken ct)
    {
        if (Ended)
        {
            throw new InvalidOperationException("the transaction already ended");
        }

        var r = await _handler(request, ct).ConfigureAwait(false);
        switch (r.Error)
        {
            case null:
                return r;
            case { Code: RpcErrorCode.TxnAborted } e:
                Ended = true;
                throw new GatewayTxnAbortedException(e.Message);
            case var e:
                throw new GatewayRpcException(e);
        }
    }
}

/// <summary>The transaction was aborted by the server during an op (retryable: the runner runs the body again).</summary>
public sealed class GatewayTxnAbortedException(string message) : Exception(message);
