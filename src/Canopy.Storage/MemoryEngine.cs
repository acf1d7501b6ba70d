namespace Canopy.Storage;

/// <summary>
/// An in-memory <see cref="IStorageEngine"/> with exactly the durability contract of the interface, and a
/// <see cref="Crash"/> that applies it: used by unit tests and the deterministic simulation.
///
/// Guarantees:
/// - Reads see every write at once, durable or not. Batches apply atomically, and a crash never splits one.
/// - A <c>sync: true</c> write, <see cref="Sync"/> and <see cref="Dispose"/> (a clean shutdown) make every
///   earlier write durable. <see cref="Crash"/> drops all non-durable batches, or with a <see cref="Random"/> a
///   random suffix of them (never a prefix); the batches it keeps become durable, as after a restart.
/// - Fully deterministic: ordered structures only (no hashing, no dictionary iteration order), and a crash
///   draws exactly one number from the given <see cref="Random"/>.
/// - Keys and values are copied on the way in and out, so callers may reuse their arrays.
/// - Thread-safe. The engine stays usable after <see cref="Crash"/> and after <see cref="Dispose"/>: the simulated
///   server restarts on the same instance.
/// - A scan sees the state at the moment its enumeration starts (as a RocksDB iterator does).
///
/// Cost: the live state is one balanced tree; each non-durable batch keeps an undo record per key it changed,
/// so a write costs O(changes · log n), a sync O(1) and a crash O(undone changes · log n). Nothing copies the
/// whole state.
/// </summary>
public sealed class MemoryEngine : IStorageEngine
{
    private readonly Lock _lock = new();

    /// <summary>The current state: durable writes plus the pending (not yet durable) ones.</summary>
    private readonly SortedSet<Entry> _data = new(EntryComparer.Instance);

    /// <summary>For each pending batch in order, the prior value (null: absent) of each key it changed, in change order.</summary>
    private readonly List<Undo> _undo = [];

    /// <summary>Index into <see cref="_undo"/> where each pending batch's records begin; one element per pending batch.</summary>
    private readonly List<int> _pendingStarts = [];

    private long _durableWrites;
    private long _lostWrites;
    private long _syncOperations;
    private long _crashes;

    /// <summary>Batches that have become durable so far (synced, or kept by a crash).</summary>
    public long DurableWrites
    {
        get
        {
            lock (_lock)
            {
                return _durableWrites;
            }
        }
    }

    /// <summary>Batches written but not yet durable: what a crash may lose.</summary>
    public long PendingBatches
    {
        get
        {
            lock (_lock)
            {
                return _pendingStarts.Count;
            }
        }
    }

    /// <summary>Batches lost by crashes so far.</summary>
    public long LostWrites
    {
        get
        {
            lock (_lock)
            {
                return _lostWrites;
            }
        }
    }

    /// <summary>Sync operations so far (each <c>sync: true</c> write, <see cref="Sync"/> call and clean shutdown): the fsyncs a real disk would do.</summary>
    public long SyncOperations
    {
        get
        {
            lock (_lock)
            {
                return _syncOperations;
            }
        }
    }

    /// <summary>Calls to <see cref="Crash"/> so far.</summary>
    public long Crashes
    {
        get
        {
            lock (_lock)
            {
                return _crashes;
            }
        }
    }

    /// <summary>Keys currently stored (durable or not).</summary>
    public int KeyCount
    {
        get
        {
            lock (_lock)
            {
                return _data.Count;
            }
        }
    }

    /// <inheritdoc/>
    public void Write(WriteBatch batch, bool sync)
    {
        WriteBatchChecks.Validate(batch);
        lock (_lock)
        {
            if (sync)
            {
                // Everything before becomes durable, and so does this batch once applied: no undo needed.
                MakeDurableLocked();
                Apply(batch, recordUndo: false);
                _durableWrites++;
                _syncOperations++;
            }
            else
            {
                _pendingStarts.Add(_undo.Count);
                Apply(batch, recordUndo: true);
            }
        }
    }

    /// <inheritdoc/>
    public void Sync()
    {
        lock (_lock)
        {
            MakeDurableLocked();
            _syncOperations++;
        }
    }

    /// <summary>
    /// Simulates a crash and restart. Without <paramref name="rng"/> every non-durable batch is lost; with it, a
    /// random-length prefix of them (possibly none or all) survives and the rest is lost, whole batches only.
    /// Afterwards every surviving write is durable and the engine is ready for the restarted server.
    /// </summary>
    /// <returns>The number of batches lost.</returns>
    public int Crash(Random? rng = null)
    {
        lock (_lock)
        {
            var pending = _pendingStarts.Count;
            var keep = rng is null ? 0 : rng.Next(pending + 1);
            if (keep < pending)
            {
                var keepUndoCount = _pendingStarts[keep];
                for (var i = _undo.Count - 1; i >= keepUndoCount; i--)
                {
                    Restore(_undo[i]);
                }

                _undo.RemoveRange(keepUndoCount, _undo.Count - keepUndoCount);
            }

            _lostWrites += pending - keep;
            _durableWrites += keep;
            _crashes++;
            _undo.Clear();
            _pendingStarts.Clear();
            return pending - keep;
        }
    }

    /// <inheritdoc/>
    public byte[]? Get(ReadOnlySpan<byte> key)
    {
        var probe = Entry.Probe(key.ToArray());
        lock (_lock)
        {
            return _data.TryGetValue(probe, out var entry) ? (byte[])entry.Value.Clone() : null;
        }
    }

    /// <inheritdoc/>
    public IEnumerable<KeyValuePair<byte[], byte[]>> Scan(byte[] lower, byte[] upper)
    {
        ArgumentNullException.ThrowIfNull(lower);
        ArgumentNullException.ThrowIfNull(upper);
        return WriteBatchChecks.IsEmptyRange(lower, upper) ? [] : ScanFrom((byte[])lower.Clone(), (byte[])upper.Clone());
    }

    /// <summary>A clean shutdown: every write so far becomes durable. The engine remains usable (a restart reuses it).</summary>
    public void Dispose() => Sync();

    private IEnumerable<KeyValuePair<byte[], byte[]>> ScanFrom(byte[] lower, byte[] upper)
    {
        List<KeyValuePair<byte[], byte[]>> snapshot = [];
        lock (_lock)
        {
            // The view is inclusive at both ends; the exclusive upper bound is applied below.
            foreach (var entry in _data.GetViewBetween(Entry.Probe(lower), Entry.Probe(upper)))
            {
                if (ByteArrayComparer.CompareBytes(entry.Key, upper) >= 0)
                {
                    break;
                }

                snapshot.Add(new((byte[])entry.Key.Clone(), (byte[])entry.Value.Clone()));
            }
        }

        foreach (var pair in snapshot)
        {
            yield return pair;
        }
    }

    private void MakeDurableLocked()
    {
        _durableWrites += _pendingStarts.Count;
        _pendingStarts.Clear();
        _undo.Clear();
    }

    private void Apply(WriteBatch batch, bool recordUndo)
    {
        foreach (var op in batch.Ops)
        {
            switch (op.Kind)
            {
                case WriteBatch.OpKind.Put:
                    Put((byte[])op.Key.Clone(), (byte[])op.Value!.Clone(), recordUndo);
                    break;
                case WriteBatch.OpKind.Delete:
                    Delete(op.Key, recordUndo);
                    break;
                case WriteBatch.OpKind.DeleteRange:
                    DeleteRange(op.Key, op.Value!, recordUndo);
                    break;
                default:
                    throw new InvalidOperationException($"unknown op kind {op.Kind}"); // Validate rejects these first.
            }
        }
    }

    private void Put(byte[] key, byte[] value, bool recordUndo)
    {
        var probe = Entry.Probe(key);
        if (_data.TryGetValue(probe, out var existing))
        {
            if (recordUndo)
            {
                _undo.Add(new Undo(existing.Key, existing.Value));
            }

            existing.Value = value;
        }
        else
        {
            if (recordUndo)
            {
                _undo.Add(new Undo(key, null));
            }

            _data.Add(new Entry(key, value));
        }
    }

    private void Delete(byte[] key, bool recordUndo)
    {
        if (_data.TryGetValue(Entry.Probe(key), out var existing))
        {
            _data.Remove(existing);
            if (recordUndo)
            {
                _undo.Add(new Undo(existing.Key, existing.Value));
            }
        }
    }

    private void DeleteRange(byte[] start, byte[] end, bool recordUndo)
    {
        if (WriteBatchChecks.IsEmptyRange(start, end))
        {
            return;
        }

        List<Entry>? doomed = null;
        foreach (var entry in _data.GetViewBetween(Entry.Probe(start), Entry.Probe(end)))
        {
            if (ByteArrayComparer.CompareBytes(entry.Key, end) >= 0)
            {
                break;
            }

            (doomed ??= []).Add(entry);
        }

        if (doomed is null)
        {
            return;
        }

        foreach (var entry in doomed)
        {
            _data.Remove(entry);
            if (recordUndo)
            {
                _undo.Add(new Undo(entry.Key, entry.Value));
            }
        }
    }

    private void Restore(Undo undo)
    {
        var probe = Entry.Probe(undo.Key);
        if (undo.OldValue is null)
        {
            _data.Remove(probe);
        }
        else if (_data.TryGetValue(probe, out var existing))
        {
            existing.Value = undo.OldValue;
        }
        else
        {
            _data.Add(new Entry(undo.Key, undo.OldValue));
        }
    }

    /// <summary>One key and its value. Owned by the engine: neither array is ever handed out.</summary>
    private sealed class Entry(byte[] key, byte[] value)
    {
        public byte[] Key { get; } = key;

        public byte[] Value { get; set; } = value;

        public static Entry Probe(byte[] key) => new(key, []);
    }

    private sealed class EntryComparer : IComparer<Entry>
    {
        public static EntryComparer Instance { get; } = new();

        public int Compare(Entry? x, Entry? y) => ByteArrayComparer.Instance.Compare(x?.Key, y?.Key);
    }

    private readonly record struct Undo(byte[] Key, byte[]? OldValue);
}
