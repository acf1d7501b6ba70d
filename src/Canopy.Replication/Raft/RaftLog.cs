namespace Canopy.Replication.Raft;

/// <summary>
/// The in-memory view of one replica's Raft log: a compacted prefix summarised by <see cref="SnapshotMeta"/>
/// (index, term and membership at that point) followed by the entries after it.
///
/// Invariants:
/// - entries are contiguous: entry k has index <c>Snapshot.Index + 1 + k</c>; terms never decrease along the log;
/// - <c>Snapshot.Index &lt;= Applied &lt;= Committed</c> and <c>Applied &lt;= Stable</c> (only durable entries are applied);
/// - <see cref="Stable"/> is the last index known to be durable on this server with the term it has now;
///   entries in (Stable, LastIndex] are unstable and go into the next Ready;
/// - the current membership is the last configuration entry in the log, else the snapshot's:
///   a configuration takes effect when it is appended, and reverts if the entry is truncated away.
/// </summary>
internal sealed class RaftLog
{
    private readonly List<Entry> _entries = [];

    /// <summary>(index, conf) of every configuration entry after the snapshot, in log order.</summary>
    private readonly List<(ulong Index, ConfState Conf)> _confs = [];

    public RaftLog(SnapshotMeta snapshot, IReadOnlyList<Entry> entries, ulong committed, ulong applied)
    {
        Snapshot = snapshot;
        foreach (var e in entries)
        {
            if (e.Index != LastIndex + 1)
            {
                throw new InvalidOperationException($"raft log: entry {e.Index} does not follow {LastIndex}");
            }

            AppendOne(e);
        }

        Stable = LastIndex;
        Committed = Math.Max(snapshot.Index, Math.Min(committed, LastIndex));
        Applied = Math.Max(snapshot.Index, Math.Min(applied, Committed));
    }

    /// <summary>The compacted prefix (or the installed snapshot).</summary>
    public SnapshotMeta Snapshot { get; private set; }

    /// <summary>A snapshot received from the leader that is not yet durable; goes into the next Ready.</summary>
    public Snapshot? PendingSnapshot { get; private set; }

    public ulong Committed { get; private set; }

    public ulong Applied { get; private set; }

    public ulong Stable { get; private set; }

    public ulong FirstIndex => Snapshot.Index + 1;

    public ulong LastIndex => Snapshot.Index + (ulong)_entries.Count;

    public ulong LastTerm => _entries.Count == 0 ? Snapshot.Term : _entries[^1].Term;

    public int Count => _entries.Count;

    /// <summary>The membership in force: the last configuration entry, else the snapshot's.</summary>
    public ConfState Conf => _confs.Count > 0 ? _confs[^1].Conf : Snapshot.Conf;

    /// <summary>Index of the last configuration entry after the snapshot, or 0.</summary>
    public ulong LastConfIndex => _confs.Count > 0 ? _confs[^1].Index : 0;

    /// <summary>The membership as of index <paramref name="index"/> (for snapshots and compaction).</summary>
    public ConfState ConfAt(ulong index)
    {
        for (var i = _confs.Count - 1; i >= 0; i--)
        {
            if (_confs[i].Index <= index)
            {
                return _confs[i].Conf;
            }
        }

        return Snapshot.Conf;
    }

    /// <summary>Term of the entry at <paramref name="index"/>; 0 if past the end; null if compacted away.</summary>
    public ulong? Term(ulong index)
    {
        if (index == Snapshot.Index)
        {
            return Snapshot.Term;
        }

        if (index < Snapshot.Index)
        {
            return null;
        }

        if (index > LastIndex)
        {
            return 0;
        }

        return _entries[(int)(index - Snapshot.Index - 1)].Term;
    }

    public bool MatchTerm(ulong index, ulong term) => Term(index) is { } t && t == term && (index <= LastIndex);

    public Entry EntryAt(ulong index) => _entries[(int)(index - Snapshot.Index - 1)];

    /// <summary>Raft's up-to-date rule (§5.4.1): a higher last term, or the same term and at least as long.</summary>
    public bool IsUpToDate(ulong lastIndex, ulong lastTerm, bool compareIndexOnly = false)
    {
        if (compareIndexOnly)
        {
            return lastIndex >= LastIndex;
        }

        return lastTerm > LastTerm || (lastTerm == LastTerm && lastIndex >= LastIndex);
    }

    /// <summary>Leader append: entries must follow the last index.</summary>
    public void Append(Entry e)
    {
        if (e.Index != LastIndex + 1)
        {
            throw new InvalidOperationException($"raft log: append {e.Index} after {LastIndex}");
        }

        AppendOne(e);
    }

    /// <summary>
    /// Follower append (AppendEntries receiver, §5.3). Returns the last index known to match the leader,
    /// or null if (prevIndex, prevTerm) does not match. Truncates only at a real conflict: an incoming entry
    /// whose term differs at the same index. Entries already present are never truncated by a stale message.
    /// </summary>
    public ulong? MaybeAppend(ulong prevIndex, ulong prevTerm, ulong leaderCommit, Entry[] entries, bool bugTruncateAlways, out string? violation)
    {
        violation = null;
        if (!MatchTerm(prevIndex, prevTerm))
        {
            return null;
        }

        var lastNew = prevIndex + (ulong)entries.Length;
        if (bugTruncateAlways && entries.Length > 0)
        {
            // Planted bug (raft-pitfalls 4): truncate after the message's entries even when nothing conflicts.
            if (LastIndex > lastNew)
            {
                if (lastNew < Committed)
                {
                    // A committed entry is about to vanish; keep the log consistent with committed state
                    // only enough to let the simulation observe the damage elsewhere.
                    Committed = Math.Max(Snapshot.Index, lastNew);
                    Applied = Math.Min(Applied, Committed);
                }

                TruncateAfter(lastNew);
            }
        }

        var conflict = FindConflict(entries);
        if (conflict != 0)
        {
            if (conflict <= Committed)
            {
                violation = $"raft log: conflict at committed index {conflict} (committed {Committed})";
                return null;
            }

            if (conflict <= LastIndex)
            {
                TruncateAfter(conflict - 1);
            }

            var start = (int)(conflict - prevIndex - 1);
            for (var i = start; i < entries.Length; i++)
            {
                AppendOne(entries[i]);
            }
        }

        CommitTo(Math.Min(leaderCommit, lastNew));
        return lastNew;
    }

    /// <summary>
    /// The index of the first entry that is new or conflicts with the log, or 0 if all are present.
    /// Entries at or below the snapshot are treated as present (they are committed).
    /// </summary>
    private ulong FindConflict(Entry[] entries)
    {
        foreach (var e in entries)
        {
            if (e.Index <= Snapshot.Index)
            {
                continue;
            }

            if (e.Index > LastIndex || Term(e.Index) != e.Term)
            {
                return e.Index;
            }
        }

        return 0;
    }

    /// <summary>
    /// The largest index at or below <paramref name="index"/> whose term is at most <paramref name="term"/>
    /// (fast backtracking of a rejected append). Never below the snapshot index.
    /// </summary>
    public ulong FindConflictByTerm(ulong index, ulong term)
    {
        var i = Math.Min(index, LastIndex);
        while (i > Snapshot.Index)
        {
            if (Term(i) is { } t && t <= term)
            {
                break;
            }

            i--;
        }

        return i;
    }

    public void CommitTo(ulong index)
    {
        if (index > Committed)
        {
            if (index > LastIndex)
            {
                throw new InvalidOperationException($"raft log: commit {index} beyond last index {LastIndex}");
            }

            Committed = index;
        }
    }

    /// <summary>
    /// Marks the unstable entries up to <paramref name="index"/> durable if the log still holds the entry
    /// with <paramref name="term"/> there (a truncation meanwhile may have replaced it).
    /// </summary>
    public void StableTo(ulong index, ulong term)
    {
        if (index > Stable && Term(index) is { } t && t == term && index <= LastIndex)
        {
            Stable = index;
        }
    }

    public void AppliedTo(ulong index)
    {
        if (index > Applied)
        {
            Applied = index;
        }
    }

    /// <summary>Entries in [lo, hi) up to <paramref name="maxBytes"/> (at least one entry if any).</summary>
    public Entry[] Slice(ulong lo, ulong hi, long maxBytes)
    {
        if (lo >= hi)
        {
            return [];
        }

        var from = (int)(lo - Snapshot.Index - 1);
        var to = (int)(hi - Snapshot.Index - 1);
        var list = new List<Entry>(Math.Min(to - from, 64));
        long size = 0;
        for (var i = from; i < to; i++)
        {
            var e = _entries[i];
            size += e.Size;
            if (list.Count > 0 && size > maxBytes)
            {
                break;
            }

            list.Add(e);
        }

        return [.. list];
    }

    /// <summary>Entries not yet durable, for the next Ready.</summary>
    public Entry[] UnstableEntries() => Stable >= LastIndex ? [] : Slice(Stable + 1, LastIndex + 1, long.MaxValue);

    /// <summary>Committed, durable entries not yet applied, for the next Ready.</summary>
    public Entry[] NextCommitted(long maxBytes)
    {
        var hi = Math.Min(Committed, Stable);
        return hi <= Applied ? [] : Slice(Applied + 1, hi + 1, maxBytes);
    }

    /// <summary>
    /// Replaces the log with a snapshot from the leader. Returns false (and changes nothing) if the
    /// snapshot is not newer than what is committed here (raft-pitfalls 7: snapshots never go backwards).
    /// If the log already holds the snapshot's last entry, only the commit index moves.
    /// </summary>
    public bool Restore(Snapshot snapshot)
    {
        var meta = snapshot.Meta;
        if (meta.Index <= Committed)
        {
            return false;
        }

        if (MatchTerm(meta.Index, meta.Term))
        {
            CommitTo(meta.Index);
            return false;
        }

        _entries.Clear();
        _confs.Clear();
        Snapshot = meta;
        PendingSnapshot = snapshot;
        Committed = meta.Index;
        Applied = meta.Index;
        Stable = meta.Index;
        return true;
    }

    /// <summary>The pending snapshot became durable and was installed.</summary>
    public void SnapshotPersisted(ulong index)
    {
        if (PendingSnapshot is { } s && s.Meta.Index == index)
        {
            PendingSnapshot = null;
        }
    }

    /// <summary>
    /// Drops entries at or below <paramref name="index"/> (which must be applied and durable),
    /// remembering the term and membership at that point.
    /// </summary>
    public void Compact(ulong index)
    {
        if (index <= Snapshot.Index)
        {
            return;
        }

        if (index > Applied || index > Stable)
        {
            throw new InvalidOperationException($"raft log: compact {index} beyond applied {Applied} / stable {Stable}");
        }

        var term = Term(index)!.Value;
        var conf = ConfAt(index);
        var drop = (int)(index - Snapshot.Index);
        _entries.RemoveRange(0, drop);
        _confs.RemoveAll(c => c.Index <= index);
        Snapshot = new SnapshotMeta(index, term, conf);
    }

    private void AppendOne(Entry e)
    {
        _entries.Add(e);
        if (e.Type == EntryType.ConfChange)
        {
            _confs.Add((e.Index, ConfState.Decode(e.Data.Span)));
        }
    }

    private void TruncateAfter(ulong index)
    {
        var keep = (int)(index - Snapshot.Index);
        if (keep < _entries.Count)
        {
            _entries.RemoveRange(keep, _entries.Count - keep);
        }

        _confs.RemoveAll(c => c.Index > index);
        if (Stable > index)
        {
            Stable = index;
        }
    }
}
