using System.Globalization;

namespace Canopy.Variant;

// Godot's built-in math types as plain data, in the single-precision layout the engine uses (real_t = float32).
// Equality is component-wise with float.Equals (NaN equals NaN, 0 equals -0), like Godot's hash comparison.

/// <summary>Godot <c>Vector2</c>.</summary>
public readonly record struct Vector2(float X, float Y)
{
    public override string ToString() => $"({F.S(X)}, {F.S(Y)})";
}

/// <summary>Godot <c>Vector2i</c>.</summary>
public readonly record struct Vector2I(int X, int Y)
{
    public override string ToString() => $"({X}, {Y})";
}

/// <summary>Godot <c>Vector3</c>.</summary>
public readonly record struct Vector3(float X, float Y, float Z)
{
    public override string ToString() => $"({F.S(X)}, {F.S(Y)}, {F.S(Z)})";
}

/// <summary>Godot <c>Vector3i</c>.</summary>
public readonly record struct Vector3I(int X, int Y, int Z)
{
    public override string ToString() => $"({X}, {Y}, {Z})";
}

/// <summary>Godot <c>Vector4</c>.</summary>
public readonly record struct Vector4(float X, float Y, float Z, float W)
{
    public override string ToString() => $"({F.S(X)}, {F.S(Y)}, {F.S(Z)}, {F.S(W)})";
}

/// <summary>Godot <c>Vector4i</c>.</summary>
public readonly record struct Vector4I(int X, int Y, int Z, int W)
{
    public override string ToString() => $"({X}, {Y}, {Z}, {W})";
}

/// <summary>Godot <c>Rect2</c>: position and size.</summary>
public readonly record struct Rect2(Vector2 Position, Vector2 Size)
{
    public Rect2(float x, float y, float width, float height)
        : this(new Vector2(x, y), new Vector2(width, height))
    {
    }

    public override string ToString() => $"[P: {Position}, S: {Size}]";
}

/// <summary>Godot <c>Rect2i</c>: position and size.</summary>
public readonly record struct Rect2I(Vector2I Position, Vector2I Size)
{
    public Rect2I(int x, int y, int width, int height)
        : this(new Vector2I(x, y), new Vector2I(width, height))
    {
    }

    public override string ToString() => $"[P: {Position}, S: {Size}]";
}

/// <summary>Godot <c>Transform2D</c>: the X and Y axis columns and the origin (wire order X.x, X.y, Y.x, Y.y, O.x, O.y).</summary>
public readonly record struct Transform2D(Vector2 X, Vector2 Y, Vector2 Origin)
{
    public static Transform2D Identity => new(new Vector2(1, 0), new Vector2(0, 1), default);

    public override string ToString() => $"[X: {X}, Y: {Y}, O: {Origin}]";
}

/// <summary>Godot <c>Plane</c>: normal and distance from the origin.</summary>
public readonly record struct Plane(Vector3 Normal, float D)
{
    public override string ToString() => $"[N: {Normal}, D: {F.S(D)}]";
}

/// <summary>Godot <c>Quaternion</c> (x, y, z, w).</summary>
public readonly record struct Quaternion(float X, float Y, float Z, float W)
{
    public static Quaternion Identity => new(0, 0, 0, 1);

    public override string ToString() => $"({F.S(X)}, {F.S(Y)}, {F.S(Z)}, {F.S(W)})";
}

/// <summary>Godot <c>AABB</c>: position and size.</summary>
public readonly record struct Aabb(Vector3 Position, Vector3 Size)
{
    public override string ToString() => $"[P: {Position}, S: {Size}]";
}

/// <summary>
/// Godot <c>Basis</c>, stored by rows as the engine stores and serializes it (wire order row 0, row 1, row 2).
/// GDScript's <c>Basis(x, y, z)</c> takes columns: use <see cref="FromColumns"/> for that.
/// </summary>
public readonly record struct Basis(Vector3 Row0, Vector3 Row1, Vector3 Row2)
{
    public static Basis Identity => new(new Vector3(1, 0, 0), new Vector3(0, 1, 0), new Vector3(0, 0, 1));

    /// <summary>The basis whose columns (axes) are <paramref name="x"/>, <paramref name="y"/>, <paramref name="z"/>, as GDScript's constructor.</summary>
    public static Basis FromColumns(Vector3 x, Vector3 y, Vector3 z) =>
        new(new Vector3(x.X, y.X, z.X), new Vector3(x.Y, y.Y, z.Y), new Vector3(x.Z, y.Z, z.Z));

    /// <summary>Column 0, the X axis.</summary>
    public Vector3 X => new(Row0.X, Row1.X, Row2.X);

    /// <summary>Column 1, the Y axis.</summary>
    public Vector3 Y => new(Row0.Y, Row1.Y, Row2.Y);

    /// <summary>Column 2, the Z axis.</summary>
    public Vector3 Z => new(Row0.Z, Row1.Z, Row2.Z);

    public override string ToString() => $"[X: {X}, Y: {Y}, Z: {Z}]";
}

/// <summary>Godot <c>Transform3D</c>: basis and origin (wire order: basis rows, then origin).</summary>
public readonly record struct Transform3D(Basis Basis, Vector3 Origin)
{
    public static Transform3D Identity => new(Basis.Identity, default);

    public override string ToString() => $"[X: {Basis.X}, Y: {Basis.Y}, Z: {Basis.Z}, O: {Origin}]";
}

/// <summary>Godot <c>Projection</c>: four columns (wire order X, Y, Z, W columns).</summary>
public readonly record struct Projection(Vector4 X, Vector4 Y, Vector4 Z, Vector4 W)
{
    public override string ToString() => $"[X: {X}, Y: {Y}, Z: {Z}, W: {W}]";
}

/// <summary>Godot <c>Color</c>: always four float32 components, also in double-precision builds.</summary>
public readonly record struct Color(float R, float G, float B, float A = 1f)
{
    public override string ToString() => $"({F.S(R)}, {F.S(G)}, {F.S(B)}, {F.S(A)})";
}

internal static class F
{
    public static string S(float v) => v.ToString("R", CultureInfo.InvariantCulture);

    public static string S(double v) => v.ToString("R", CultureInfo.InvariantCulture);
}
