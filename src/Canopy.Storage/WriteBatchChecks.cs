namespace Canopy.Storage;

/// <summary>Validation shared by the engines, so that a malformed batch is rejected whole, before anything is applied.</summary>
internal static class WriteBatchChecks
{
    public static void Validate(WriteBatch batch)
    {
        ArgumentNullException.ThrowIfNull(batch);
        var ops = batch.Ops;
        for (var i = 0; i < ops.Count; i++)
        {
            var op = ops[i];
            if (op.Key is null)
            {
                throw new ArgumentException($"write batch op {i} ({op.Kind}) has a null key", nameof(batch));
            }

            switch (op.Kind)
            {
                case WriteBatch.OpKind.Put when op.Value is null:
                    throw new ArgumentException($"write batch op {i} (Put) has a null value", nameof(batch));
                case WriteBatch.OpKind.DeleteRange when op.Value is null:
                    throw new ArgumentException($"write batch op {i} (DeleteRange) has a null end key", nameof(batch));
                case WriteBatch.OpKind.Put or WriteBatch.OpKind.Delete or WriteBatch.OpKind.DeleteRange:
                    break;
                default:
                    throw new ArgumentException($"write batch op {i} has unknown kind {op.Kind}", nameof(batch));
            }
        }
    }

    /// <summary>True when [start, end) contains no key (end at or before start): such a DeleteRange is a no-op.</summary>
    public static bool IsEmptyRange(byte[] start, byte[] end) => ByteArrayComparer.CompareBytes(start, end) >= 0;
}
