using Canopy.Clock;
using Canopy.Storage;

namespace Canopy.Mvcc;

/// <summary>
/// Multi-version user data over an <see cref="IStorageEngine"/> (DESIGN §4), in the key layout of <see cref="MvccKeys"/>.
///
/// Guarantees:
/// - A read at timestamp T sees, per user key, the newest committed version at or below T; a deletion (tombstone)
///   version hides the key. Versions above T are invisible, except that with an uncertainty limit L a committed
///   version in (T, L] makes the read report <see cref="MvccReadStatus.ReadWithinUncertainty"/> (txn-pitfalls 10).
/// - An intent of another transaction at or below T (or L) is reported as <see cref="MvccReadStatus.IntentConflict"/>,
///   with the intent; it is never thrown and never read through. An intent of another transaction above T (and L) is
///   ignored. The reader's own intent of its current epoch is visible whatever its timestamp (read your writes); its own
///   intent of an earlier epoch is ignored.
/// - Each read works on one engine snapshot (a single engine scan), so it never mixes two states of the store.
/// - Writes only go into the caller's <see cref="WriteBatch"/>, to be applied atomically (one batch per Raft entry);
///   reads see the engine, not unapplied batches. Put/Delete are raw writes: the caller (latches, timestamp cache,
///   <see cref="IsWriteTooOld"/>, intents) decides that they are allowed. <see cref="PutIntent"/> checks conflicts itself.
/// - Garbage collection below a threshold G never changes what a read at or above G sees.
/// - Version values are stored as a tag byte (0x00 deletion, 0x01 value) followed by the value bytes, so an empty value
///   and a deletion stay distinct. Corrupt data gives <see cref="FormatException"/>.
/// - Stateless apart from the engine: as thread-safe as the engine; concurrent writers of the same key must be
///   serialized by the caller (latches).
/// </summary>
public sealed class MvccStore
{
    private const byte TombstoneTag = 0x00;
    private const byte ValueTag = 0x01;

    private static readonly IReadOnlyList<MvccKeyValue> NoRows = [];
    private static readonly IReadOnlyList<MvccKeyIntent> NoIntents = [];

    public MvccStore(IStorageEngine engine)
    {
        ArgumentNullException.ThrowIfNull(engine);
        Engine = engine;
    }

    /// <summary>The engine holding the data.</summary>
    public IStorageEngine Engine { get; }

    /// <summary>Adds to <paramref name="batch"/> a committed version of <paramref name="key"/> at <paramref name="timestamp"/> (replacing one at exactly that timestamp).</summary>
    public void Put(WriteBatch batch, byte[] key, HlcTimestamp timestamp, byte[] value)
    {
        ArgumentNullException.ThrowIfNull(batch);
        ArgumentNullException.ThrowIfNull(value);
        CheckWriteTimestamp(timestamp);
        batch.Put(MvccKeys.VersionKey(key, timestamp), EncodeVersion(value));
    }

    /// <summary>Adds to <paramref name="batch"/> a deletion (tombstone) version of <paramref name="key"/> at <paramref name="timestamp"/>.</summary>
    public void Delete(WriteBatch batch, byte[] key, HlcTimestamp timestamp)
    {
        ArgumentNullException.ThrowIfNull(batch);
        CheckWriteTimestamp(timestamp);
        batch.Put(MvccKeys.VersionKey(key, timestamp), EncodeVersion(null));
    }

    /// <summary>The value of <paramref name="key"/> visible at <paramref name="readTimestamp"/> to <paramref name="txn"/> (null: a non-transactional read).</summary>
    public MvccGetResult Get(byte[] key, HlcTimestamp readTimestamp, MvccTxn? txn = null) =>
        GetWithUncertainty(key, readTimestamp, readTimestamp, txn);

    /// <summary>
    /// As <see cref="Get"/>, but a committed version in (<paramref name="readTimestamp"/>, <paramref name="uncertaintyLimit"/>]
    /// gives <see cref="MvccReadStatus.ReadWithinUncertainty"/> with the newest such version's timestamp, and another
    /// transaction's intent at or below the limit is a conflict. A limit at or below the read timestamp means no uncertainty.
    /// </summary>
    public MvccGetResult GetWithUncertainty(byte[] key, HlcTimestamp readTimestamp, HlcTimestamp uncertaintyLimit, MvccTxn? txn = null)
    {
        ArgumentNullException.ThrowIfNull(key);
        var scan = ScanCore(MvccKeys.KeyStart(key), MvccKeys.KeyEnd(key), readTimestamp, HlcTimestamp.Max(readTimestamp, uncertaintyLimit), txn, maxKeys: 1);
        return scan.Status switch
        {
            MvccReadStatus.IntentConflict => new MvccGetResult(MvccReadStatus.IntentConflict, null, scan.Intents[0].Intent, null),
            MvccReadStatus.ReadWithinUncertainty => new MvccGetResult(MvccReadStatus.ReadWithinUncertainty, null, null, scan.UncertainTimestamp),
            _ when scan.Rows.Count == 0 => new MvccGetResult(MvccReadStatus.Ok, null, null, null),
            _ => new MvccGetResult(MvccReadStatus.Ok, new MvccValue(scan.Rows[0].Value, scan.Rows[0].Timestamp, scan.Rows[0].IsProvisional), null, null),
        };
    }

    /// <summary>
    /// The visible rows of the user keys in [<paramref name="startKey"/>, <paramref name="endKey"/>) (null end: to the end
    /// of user data) at <paramref name="readTimestamp"/>, in key order, deletions skipped, at most <paramref name="maxKeys"/>
    /// rows. Conflicting intents of other transactions are collected (their keys get no row) and make the status
    /// <see cref="MvccReadStatus.IntentConflict"/>; an uncertain version (with <paramref name="uncertaintyLimit"/>) stops the
    /// scan with <see cref="MvccReadStatus.ReadWithinUncertainty"/>.
    /// </summary>
    public MvccScanResult Scan(byte[] startKey, byte[]? endKey, HlcTimestamp readTimestamp, int maxKeys, MvccTxn? txn = null, HlcTimestamp? uncertaintyLimit = null)
    {
        ArgumentNullException.ThrowIfNull(startKey);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxKeys);
        var (lower, upper) = MvccKeys.Span(startKey, endKey);
        if (endKey is not null && ByteArrayComparer.CompareBytes(startKey, endKey) >= 0)
        {
            return new MvccScanResult(MvccReadStatus.Ok, NoRows, NoIntents, null, null, null);
        }

        return ScanCore(lower, upper, readTimestamp, HlcTimestamp.Max(readTimestamp, uncertaintyLimit ?? readTimestamp), txn, maxKeys);
    }

    /// <summary>The timestamp of the newest committed version of <paramref name="key"/> (deletions included), or null if it has none. Intents are not versions.</summary>
    public HlcTimestamp? GetNewestTimestamp(byte[] key)
    {
        ArgumentNullException.ThrowIfNull(key);
        foreach (var entry in Engine.Scan(MvccKeys.VersionsStart(key), MvccKeys.KeyEnd(key)))
        {
            return MvccKeys.Decode(entry.Key).Timestamp;
        }

        return null;
    }

    /// <summary>
    /// Write-too-old check: true when <paramref name="key"/> has a committed version at or above <paramref name="writeTimestamp"/>,
    /// so a write there must be pushed to <paramref name="minimumTimestamp"/> (just above the newest version) or higher.
    /// When false, <paramref name="minimumTimestamp"/> is <paramref name="writeTimestamp"/>.
    /// </summary>
    public bool IsWriteTooOld(byte[] key, HlcTimestamp writeTimestamp, out HlcTimestamp minimumTimestamp) =>
        IsWriteTooOld(writeTimestamp, GetNewestTimestamp(key), out minimumTimestamp);

    /// <summary>The write-too-old rule on its own: a write at or below the newest committed version's timestamp must go above it.</summary>
    public static bool IsWriteTooOld(HlcTimestamp writeTimestamp, HlcTimestamp? newestVersion, out HlcTimestamp minimumTimestamp)
    {
        if (newestVersion is { } newest && newest >= writeTimestamp)
        {
            minimumTimestamp = newest.Next();
            return true;
        }

        minimumTimestamp = writeTimestamp;
        return false;
    }

    /// <summary>The intent on <paramref name="key"/>, of any transaction, or null.</summary>
    public MvccIntent? GetIntent(byte[] key)
    {
        ArgumentNullException.ThrowIfNull(key);
        var stored = Engine.Get(MvccKeys.IntentKey(key));
        return stored is null ? null : MvccIntent.Decode(stored);
    }

    /// <summary>
    /// Adds <paramref name="intent"/> on <paramref name="key"/> to <paramref name="batch"/>, unless another transaction's
    /// intent holds the key (<see cref="MvccWriteStatus.IntentConflict"/>), a committed version exists at or above the
    /// intent's timestamp (<see cref="MvccWriteStatus.WriteTooOld"/>), or the key holds this transaction's intent of a later
    /// epoch (<see cref="MvccWriteStatus.StaleEpoch"/>). Rewriting the transaction's own intent of the same epoch never
    /// lowers its timestamp (intents' timestamps only grow): the higher of the two is written.
    /// </summary>
    public MvccWriteResult PutIntent(WriteBatch batch, byte[] key, MvccIntent intent)
    {
        ArgumentNullException.ThrowIfNull(batch);
        ArgumentNullException.ThrowIfNull(key);
        ArgumentNullException.ThrowIfNull(intent);
        CheckWriteTimestamp(intent.WriteTimestamp);
        var (existing, newest) = ReadHead(key);
        if (existing is not null)
        {
            if (existing.TxnId != intent.TxnId)
            {
                return new MvccWriteResult(MvccWriteStatus.IntentConflict, existing, null);
            }

            if (existing.Epoch > intent.Epoch)
            {
                return new MvccWriteResult(MvccWriteStatus.StaleEpoch, existing, null);
            }

            if (existing.Epoch == intent.Epoch && existing.Sequence > intent.Sequence)
            {
                // A delayed or retried older write of this transaction: the newer intent stays.
                return new MvccWriteResult(MvccWriteStatus.Ok, existing, null);
            }

            if (existing.Epoch == intent.Epoch && existing.WriteTimestamp > intent.WriteTimestamp)
            {
                intent = intent with { WriteTimestamp = existing.WriteTimestamp };
            }
        }

        if (IsWriteTooOld(intent.WriteTimestamp, newest, out var minimum))
        {
            return new MvccWriteResult(MvccWriteStatus.WriteTooOld, null, minimum);
        }

        batch.Put(MvccKeys.IntentKey(key), intent.Encode());
        return new MvccWriteResult(MvccWriteStatus.Ok, intent, null);
    }

    /// <summary>
    /// Resolves the intent of <paramref name="resolution"/>'s transaction on <paramref name="key"/>, in <paramref name="batch"/>:
    /// a commit turns an intent of the final epoch into a committed version at the commit timestamp (txn-pitfalls 4) and
    /// drops an intent of an earlier epoch; an abort drops the intent. Idempotent: with no intent of that transaction
    /// it does nothing (<see cref="MvccResolveOutcome.NoIntent"/>).
    /// </summary>
    /// <exception cref="InvalidOperationException">
    /// A commit below the intent's write timestamp, or in an epoch below the intent's: the transaction protocol is broken
    /// (txn-pitfalls 1, 2), and committing would lose or invent a write.
    /// </exception>
    public MvccResolveOutcome ResolveIntent(WriteBatch batch, byte[] key, MvccResolution resolution)
    {
        ArgumentNullException.ThrowIfNull(batch);
        var intent = GetIntent(key);
        if (intent is null || intent.TxnId != resolution.TxnId)
        {
            return MvccResolveOutcome.NoIntent;
        }

        var intentKey = MvccKeys.IntentKey(key);
        if (!resolution.IsCommit || intent.Epoch < resolution.Epoch)
        {
            batch.Delete(intentKey);
            return MvccResolveOutcome.Removed;
        }

        if (intent.Epoch > resolution.Epoch)
        {
            throw new InvalidOperationException(
                $"cannot commit txn {resolution.TxnId} in epoch {resolution.Epoch}: key {Convert.ToHexString(key)} holds its {intent}, from a later epoch");
        }

        if (intent.WriteTimestamp > resolution.CommitTimestamp)
        {
            throw new InvalidOperationException(
                $"cannot commit txn {resolution.TxnId} at {resolution.CommitTimestamp}: key {Convert.ToHexString(key)} holds its {intent}, above the commit timestamp");
        }

        batch.Put(MvccKeys.VersionKey(key, resolution.CommitTimestamp), EncodeVersion(intent.Value));
        batch.Delete(intentKey);
        return MvccResolveOutcome.Committed;
    }

    /// <summary>
    /// Adds to <paramref name="batch"/> the deletion of every version in the user keys [<paramref name="startKey"/>,
    /// <paramref name="endKey"/>) (null end: to the end of user data) that no read at or above <paramref name="gcThreshold"/>
    /// can see: per key, every version older than the newest version at or below the threshold, and that version too
    /// when it is a deletion. Versions above the threshold and intents stay. The caller records the threshold (see
    /// <see cref="RangeKeys.GcThreshold"/>) and refuses reads below it from then on.
    /// </summary>
    public MvccGcStats GarbageCollect(WriteBatch batch, byte[] startKey, byte[]? endKey, HlcTimestamp gcThreshold)
    {
        ArgumentNullException.ThrowIfNull(batch);
        ArgumentNullException.ThrowIfNull(startKey);
        var (lower, upper) = MvccKeys.Span(startKey, endKey);
        if (endKey is not null && ByteArrayComparer.CompareBytes(startKey, endKey) >= 0)
        {
            return new MvccGcStats(0, 0);
        }

        var keys = 0;
        var removed = 0;
        byte[]? group = null;
        var keptNewestBelow = false;
        var counted = false;
        foreach (var entry in Engine.Scan(lower, upper))
        {
            var terminator = MvccKeys.Parse(entry.Key, out var isIntent, out var timestamp);
            if (group is null || !entry.Key.AsSpan(0, terminator).SequenceEqual(group))
            {
                group = entry.Key[..terminator];
                keptNewestBelow = false;
                counted = false;
            }

            if (isIntent)
            {
                continue;
            }

            if (!counted)
            {
                keys++;
                counted = true;
            }

            if (timestamp > gcThreshold)
            {
                continue;
            }

            if (!keptNewestBelow)
            {
                keptNewestBelow = true;
                if (!IsTombstone(entry.Value))
                {
                    continue;
                }
            }

            batch.Delete(entry.Key);
            removed++;
        }

        return new MvccGcStats(keys, removed);
    }

    /// <summary>
    /// Moves <paramref name="txnId"/>'s intent on <paramref name="key"/> up to <paramref name="timestamp"/> (a timestamp
    /// push: the transaction stays pending but can no longer commit below it). Intents only move up; with no intent of
    /// that transaction, or one already at or above, nothing is written. Returns whether it wrote.
    /// </summary>
    public bool PushIntent(WriteBatch batch, byte[] key, Guid txnId, HlcTimestamp timestamp)
    {
        ArgumentNullException.ThrowIfNull(batch);
        var intent = GetIntent(key);
        if (intent is null || intent.TxnId != txnId || intent.WriteTimestamp >= timestamp)
        {
            return false;
        }

        batch.Put(MvccKeys.IntentKey(key), (intent with { WriteTimestamp = timestamp }).Encode());
        return true;
    }

    /// <summary>
    /// Read refresh (txn-pitfalls 9): the first user key in [<paramref name="startKey"/>, <paramref name="endKey"/>)
    /// (with <paramref name="point"/>: just <paramref name="startKey"/>; a null end: to the end of user data) with a committed version in (<paramref name="from"/>,
    /// <paramref name="to"/>] or another transaction's intent at or below <paramref name="to"/>; null when a read at
    /// <paramref name="from"/> would see exactly what a read at <paramref name="to"/> sees.
    /// </summary>
    public byte[]? FindChange(byte[] startKey, byte[]? endKey, HlcTimestamp from, HlcTimestamp to, Guid txnId, bool point)
    {
        ArgumentNullException.ThrowIfNull(startKey);
        var (lower, upper) = point ? (MvccKeys.KeyStart(startKey), MvccKeys.KeyEnd(startKey)) : MvccKeys.Span(startKey, endKey);
        if (ByteArrayComparer.CompareBytes(lower, upper) >= 0)
        {
            return null;
        }

        foreach (var entry in Engine.Scan(lower, upper))
        {
            var k = MvccKeys.Decode(entry.Key);
            if (k.Timestamp is { } ts)
            {
                if (ts > from && ts <= to)
                {
                    return k.UserKey;
                }
            }
            else
            {
                var intent = MvccIntent.Decode(entry.Value);
                if (intent.TxnId != txnId && intent.WriteTimestamp <= to)
                {
                    return k.UserKey;
                }
            }
        }

        return null;
    }

    private static void CheckWriteTimestamp(HlcTimestamp timestamp)
    {
        if (timestamp.IsZero)
        {
            throw new ArgumentException("an MVCC write needs a timestamp above zero (0.0 means \"no timestamp\")", nameof(timestamp));
        }
    }

    private static byte[] EncodeVersion(byte[]? value)
    {
        if (value is null)
        {
            return [TombstoneTag];
        }

        var encoded = new byte[1 + value.Length];
        encoded[0] = ValueTag;
        value.CopyTo(encoded, 1);
        return encoded;
    }

    private static bool IsTombstone(byte[] stored) => DecodeVersion(stored) is null;

    /// <summary>The value of a stored version, or null for a deletion.</summary>
    /// <exception cref="FormatException">The bytes are not a stored version.</exception>
    public static byte[]? DecodeVersion(byte[] stored) => stored switch
    {
        [TombstoneTag] => null,
        [ValueTag, ..] => stored[1..],
        _ => throw new FormatException($"corrupt MVCC version value ({stored.Length} bytes, tag {(stored.Length == 0 ? "missing" : $"0x{stored[0]:X2}")})"),
    };

    /// <summary>The intent and newest version timestamp of <paramref name="key"/>, from one engine snapshot.</summary>
    private (MvccIntent? Intent, HlcTimestamp? Newest) ReadHead(byte[] key)
    {
        MvccIntent? intent = null;
        foreach (var entry in Engine.Scan(MvccKeys.KeyStart(key), MvccKeys.KeyEnd(key)))
        {
            MvccKeys.Parse(entry.Key, out var isIntent, out var timestamp);
            if (!isIntent)
            {
                return (intent, timestamp);
            }

            intent = MvccIntent.Decode(entry.Value);
        }

        return (intent, null);
    }

    /// <summary>The read algorithm shared by Get and Scan: one pass over the engine span [lower, upper).</summary>
    private MvccScanResult ScanCore(byte[] lower, byte[] upper, HlcTimestamp readTimestamp, HlcTimestamp uncertaintyLimit, MvccTxn? txn, int maxKeys)
    {
        List<MvccKeyValue>? rows = null;
        List<MvccKeyIntent>? intents = null;
        byte[]? group = null; // engine key up to the terminator: identifies the current user key
        var done = false; // the current user key is decided; skip the rest of its versions
        foreach (var entry in Engine.Scan(lower, upper))
        {
            var terminator = MvccKeys.Parse(entry.Key, out var isIntent, out var timestamp);
            if (group is null || !entry.Key.AsSpan(0, terminator).SequenceEqual(group))
            {
                if (rows is not null && rows.Count >= maxKeys)
                {
                    return Result(MvccReadStatus.Ok, resumeKey: MvccKeys.Decode(entry.Key).UserKey);
                }

                group = entry.Key[..terminator];
                done = false;
            }

            if (done)
            {
                continue;
            }

            if (isIntent)
            {
                var intent = MvccIntent.Decode(entry.Value);
                if (txn is { } reader && intent.TxnId == reader.Id)
                {
                    if (intent.Epoch > reader.Epoch)
                    {
                        throw new InvalidOperationException(
                            $"txn {reader.Id} read in epoch {reader.Epoch} but key {Convert.ToHexString(MvccKeys.Decode(entry.Key).UserKey)} holds its {intent}, from a later epoch");
                    }

                    if (intent.Epoch == reader.Epoch)
                    {
                        if (intent.Value is not null)
                        {
                            (rows ??= []).Add(new MvccKeyValue(MvccKeys.Decode(entry.Key).UserKey, intent.Value, intent.WriteTimestamp, IsProvisional: true));
                        }

                        done = true;
                    }

                    // An intent of an earlier epoch was not rewritten in this one: read the committed versions below it.
                }
                else if (intent.WriteTimestamp <= uncertaintyLimit)
                {
                    (intents ??= []).Add(new MvccKeyIntent(MvccKeys.Decode(entry.Key).UserKey, intent));
                    done = true;
                }

                continue;
            }

            if (timestamp > uncertaintyLimit)
            {
                continue;
            }

            if (timestamp > readTimestamp)
            {
                return Result(MvccReadStatus.ReadWithinUncertainty, uncertainKey: MvccKeys.Decode(entry.Key).UserKey, uncertainTimestamp: timestamp);
            }

            var value = DecodeVersion(entry.Value);
            if (value is not null)
            {
                (rows ??= []).Add(new MvccKeyValue(MvccKeys.Decode(entry.Key).UserKey, value, timestamp));
            }

            done = true;
        }

        return Result(intents is null ? MvccReadStatus.Ok : MvccReadStatus.IntentConflict);

        MvccScanResult Result(MvccReadStatus status, byte[]? resumeKey = null, byte[]? uncertainKey = null, HlcTimestamp? uncertainTimestamp = null) =>
            new(
                status == MvccReadStatus.Ok && intents is not null ? MvccReadStatus.IntentConflict : status,
                rows ?? NoRows,
                intents ?? NoIntents,
                resumeKey,
                uncertainKey,
                uncertainTimestamp);
    }
}
