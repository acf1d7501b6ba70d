// The values and results that MvccStore hands out.
// Guarantees: conflicts (intents, uncertainty, write-too-old, stale epochs) are results with a status, not exceptions,
// so the layer above can push, wait or restart (only protocol violations and corrupt data throw); byte arrays in results are fresh copies owned by the caller;
// MvccValue and MvccIntent compare their bytes by content (the record structs holding raw keys compare them by reference).
using Canopy.Clock;

namespace Canopy.Mvcc;

/// <summary>What a read ran into.</summary>
public enum MvccReadStatus
{
    /// <summary>The read completed; its values are valid at the read timestamp.</summary>
    Ok,

    /// <summary>
    /// An intent of another transaction sits at or below the read timestamp (or within the uncertainty window): its
    /// outcome decides what the read sees, so the reader must resolve or push it first. The values are not valid.
    /// </summary>
    IntentConflict,

    /// <summary>
    /// A committed version lies in (read timestamp, uncertainty limit]: it may have been written before the read
    /// started in real time, so the reader must restart above <c>UncertainTimestamp</c> (txn-pitfalls 10). The values are not valid.
    /// </summary>
    ReadWithinUncertainty,
}

/// <summary>A visible value and the timestamp of the version (or own intent) it comes from.</summary>
/// <param name="Bytes">The value.</param>
/// <param name="Timestamp">The version's timestamp; for an own intent, its write timestamp.</param>
/// <param name="IsProvisional">True when the value is the reading transaction's own uncommitted intent.</param>
public sealed record MvccValue(byte[] Bytes, HlcTimestamp Timestamp, bool IsProvisional = false)
{
    /// <inheritdoc/>
    public bool Equals(MvccValue? other) =>
        other is not null && Timestamp == other.Timestamp && IsProvisional == other.IsProvisional && Bytes.AsSpan().SequenceEqual(other.Bytes);

    /// <inheritdoc/>
    public override int GetHashCode() => HashCode.Combine(Bytes.Length, Timestamp, IsProvisional);

    /// <inheritdoc/>
    public override string ToString() => $"{Convert.ToHexString(Bytes)}@{Timestamp}{(IsProvisional ? " (own intent)" : "")}";
}

/// <summary>The result of <see cref="MvccStore.Get"/> and <see cref="MvccStore.GetWithUncertainty"/>.</summary>
/// <param name="Status">Whether the read completed or what it ran into.</param>
/// <param name="Value">With <see cref="MvccReadStatus.Ok"/>: the visible value, or null (no version, or a deletion).</param>
/// <param name="Intent">With <see cref="MvccReadStatus.IntentConflict"/>: the other transaction's intent.</param>
/// <param name="UncertainTimestamp">With <see cref="MvccReadStatus.ReadWithinUncertainty"/>: the newest version's timestamp in the window; restart above it.</param>
public readonly record struct MvccGetResult(MvccReadStatus Status, MvccValue? Value, MvccIntent? Intent, HlcTimestamp? UncertainTimestamp)
{
    /// <summary>True when the read completed and found a value.</summary>
    public bool IsFound => Status == MvccReadStatus.Ok && Value is not null;
}

/// <summary>One row of a scan: a user key, its visible value and that value's timestamp.</summary>
public readonly record struct MvccKeyValue(byte[] Key, byte[] Value, HlcTimestamp Timestamp, bool IsProvisional = false);

/// <summary>An intent met by a read, with its user key.</summary>
public readonly record struct MvccKeyIntent(byte[] Key, MvccIntent Intent);

/// <summary>The result of <see cref="MvccStore.Scan"/>.</summary>
public sealed class MvccScanResult
{
    internal MvccScanResult(MvccReadStatus status, IReadOnlyList<MvccKeyValue> rows, IReadOnlyList<MvccKeyIntent> intents, byte[]? resumeKey, byte[]? uncertainKey, HlcTimestamp? uncertainTimestamp)
    {
        Status = status;
        Rows = rows;
        Intents = intents;
        ResumeKey = resumeKey;
        UncertainKey = uncertainKey;
        UncertainTimestamp = uncertainTimestamp;
    }

    /// <summary>
    /// <see cref="MvccReadStatus.Ok"/>; <see cref="MvccReadStatus.IntentConflict"/> when <see cref="Intents"/> is not empty;
    /// <see cref="MvccReadStatus.ReadWithinUncertainty"/> when the scan stopped at an uncertain version.
    /// </summary>
    public MvccReadStatus Status { get; }

    /// <summary>Visible rows in user-key order (deletions skipped), at most the requested maximum. Complete only with <see cref="MvccReadStatus.Ok"/>.</summary>
    public IReadOnlyList<MvccKeyValue> Rows { get; }

    /// <summary>Every conflicting intent of another transaction met, in key order (their keys have no row).</summary>
    public IReadOnlyList<MvccKeyIntent> Intents { get; }

    /// <summary>Where to continue when the scan stopped at the row limit: the next user key with data; null when the span was exhausted.</summary>
    public byte[]? ResumeKey { get; }

    /// <summary>With <see cref="MvccReadStatus.ReadWithinUncertainty"/>: the key of the uncertain version.</summary>
    public byte[]? UncertainKey { get; }

    /// <summary>With <see cref="MvccReadStatus.ReadWithinUncertainty"/>: the uncertain version's timestamp; restart above it.</summary>
    public HlcTimestamp? UncertainTimestamp { get; }
}

/// <summary>Outcome of <see cref="MvccStore.PutIntent"/>.</summary>
public enum MvccWriteStatus
{
    /// <summary>The intent was added to the batch.</summary>
    Ok,

    /// <summary>Another transaction's intent holds the key (returned as the result's intent); nothing was written.</summary>
    IntentConflict,

    /// <summary>A committed version exists at or above the write timestamp; nothing was written. Retry at or above the result's minimum timestamp.</summary>
    WriteTooOld,

    /// <summary>The key holds this transaction's intent from a later epoch (a delayed write of an earlier epoch); nothing was written.</summary>
    StaleEpoch,
}

/// <summary>The result of <see cref="MvccStore.PutIntent"/>.</summary>
/// <param name="Status">What happened.</param>
/// <param name="Intent">Ok: the intent written (its timestamp may have been raised to the existing intent's); IntentConflict/StaleEpoch: the intent found.</param>
/// <param name="MinimumTimestamp">WriteTooOld: the lowest timestamp a write of the key may use (just above the newest version).</param>
public readonly record struct MvccWriteResult(MvccWriteStatus Status, MvccIntent? Intent, HlcTimestamp? MinimumTimestamp);

/// <summary>How a transaction ended, for <see cref="MvccStore.ResolveIntent"/>.</summary>
/// <param name="TxnId">The transaction.</param>
/// <param name="Epoch">Its final epoch (commit only): intents of earlier epochs were not rewritten and are dropped.</param>
/// <param name="IsCommit">Committed (true) or aborted.</param>
/// <param name="CommitTimestamp">Commit only: the final commit timestamp, at or above the intent's write timestamp.</param>
public readonly record struct MvccResolution(Guid TxnId, int Epoch, bool IsCommit, HlcTimestamp CommitTimestamp)
{
    /// <summary>The transaction committed in <paramref name="epoch"/> at <paramref name="commitTimestamp"/>.</summary>
    public static MvccResolution Commit(Guid txnId, int epoch, HlcTimestamp commitTimestamp) => new(txnId, epoch, true, commitTimestamp);

    /// <summary>The transaction aborted: its intents disappear.</summary>
    public static MvccResolution Abort(Guid txnId) => new(txnId, 0, false, HlcTimestamp.Zero);
}

/// <summary>Outcome of <see cref="MvccStore.ResolveIntent"/>.</summary>
public enum MvccResolveOutcome
{
    /// <summary>The key holds no intent of that transaction (already resolved, or never written): nothing to do.</summary>
    NoIntent,

    /// <summary>The intent became a committed version at the commit timestamp.</summary>
    Committed,

    /// <summary>The intent was removed (the transaction aborted, or the intent is from an earlier epoch).</summary>
    Removed,
}

/// <summary>What <see cref="MvccStore.GarbageCollect"/> did.</summary>
/// <param name="KeysScanned">User keys with at least one version in the span.</param>
/// <param name="VersionsRemoved">Versions deleted in the batch.</param>
public readonly record struct MvccGcStats(int KeysScanned, int VersionsRemoved);
