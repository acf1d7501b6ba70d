namespace Canopy.Tree;

using Canopy.Client;
using Canopy.Rpc;

/// <summary>One key and its value, as a tree scan returns them.</summary>
public readonly record struct TreeKv(byte[] Key, byte[] Value);

/// <summary>
/// What the tree needs of a transaction: serializable point reads, scans, puts and deletes on binary keys, reading
/// its own writes. One operation at a time. Implemented over the SDK's <see cref="CanopyTransaction"/>
/// (<see cref="CanopyTreeTxn"/>); a server gateway can implement it over its own coordinator.
/// </summary>
public interface ITreeTxn
{
    /// <summary>The value of <paramref name="key"/>, or null when absent.</summary>
    Task<byte[]?> GetAsync(byte[] key, CancellationToken ct = default);

    /// <summary>The rows in [<paramref name="start"/>, <paramref name="end"/>) in key order, at most <paramref name="limit"/> (0: all).</summary>
    Task<IReadOnlyList<TreeKv>> ScanAsync(byte[] start, byte[] end, int limit = 0, CancellationToken ct = default);

    Task PutAsync(byte[] key, byte[] value, CancellationToken ct = default);

    Task DeleteAsync(byte[] key, CancellationToken ct = default);
}

/// <summary>
/// Optional for an <see cref="ITreeTxn"/>: several reads or writes at once (pipelined), for batched property writes.
/// The results are as if done one after the other (writes to different keys; reads before the batch's writes).
/// </summary>
public interface ITreeTxnBatch
{
    /// <summary>The values of <paramref name="keys"/> (null: absent), in order.</summary>
    Task<byte[]?[]> GetManyAsync(IReadOnlyList<byte[]> keys, CancellationToken ct = default);

    /// <summary>Puts (value set) and deletes (null), all different keys.</summary>
    Task WriteManyAsync(IReadOnlyList<(byte[] Key, byte[]? Value)> writes, CancellationToken ct = default);
}

/// <summary>
/// Optional for an <see cref="ITreeTxn"/>: the transaction's own read timestamp (HLC wall time, Unix nanoseconds).
/// When the transaction offers it, lease expiry is judged by it instead of the local clock (docs/tree.md, "Time").
/// The SDK's transaction does not expose its timestamp yet, so <see cref="CanopyTreeTxn"/> does not implement this.
/// </summary>
public interface ITreeTxnClock
{
    long ReadTimestampNanos { get; }
}

/// <summary>
/// Runs <paramref name="body"/> in one serializable transaction and commits it, running it again after a retryable
/// abort; an exception from the body rolls the transaction back and propagates. Returns the outcome (committed with
/// its commit timestamp, aborted, ambiguous).
/// </summary>
public delegate Task<TransactionResult> TreeTxnRunner(Func<ITreeTxn, Task> body, CancellationToken ct);

/// <summary><see cref="ITreeTxn"/> over the .NET SDK's transaction.</summary>
public sealed class CanopyTreeTxn(CanopyTransaction txn) : ITreeTxn, ITreeTxnBatch
{
    public async Task<byte[]?[]> GetManyAsync(IReadOnlyList<byte[]> keys, CancellationToken ct = default) =>
        [.. await Transaction.GetManyAsync(keys, ct).ConfigureAwait(false)];

    public Task WriteManyAsync(IReadOnlyList<(byte[] Key, byte[]? Value)> writes, CancellationToken ct = default) =>
        Transaction.WriteManyAsync(writes.Select(w => new KvWrite(w.Key, w.Value)).ToList(), ct);

    public CanopyTransaction Transaction { get; } = txn ?? throw new ArgumentNullException(nameof(txn));

    public Task<byte[]?> GetAsync(byte[] key, CancellationToken ct = default) => Transaction.GetAsync(key, ct);

    public async Task<IReadOnlyList<TreeKv>> ScanAsync(byte[] start, byte[] end, int limit = 0, CancellationToken ct = default)
    {
        var rows = await Transaction.ScanAsync(start, end, limit, ct).ConfigureAwait(false);
        var list = new TreeKv[rows.Count];
        for (var i = 0; i < rows.Count; i++)
        {
            list[i] = new TreeKv(rows[i].Key, rows[i].Value);
        }

        return list;
    }

    public Task PutAsync(byte[] key, byte[] value, CancellationToken ct = default) => Transaction.PutAsync(key, value, ct);

    public Task DeleteAsync(byte[] key, CancellationToken ct = default) => Transaction.DeleteAsync(key, ct);

    /// <summary>A runner over <see cref="CanopyClient.RunTransactionAsync"/>.</summary>
    public static TreeTxnRunner Runner(CanopyClient client, TransactionOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(client);
        return (body, ct) => client.RunTransactionAsync(t => body(new CanopyTreeTxn(t)), options, ct);
    }
}
