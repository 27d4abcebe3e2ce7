"""``python -m fedbench``: Ctrl-C at any moment (even while importing) ends in one line."""

try:
    from fedbench.app import main
except KeyboardInterrupt:
    import sys

    sys.stderr.write("\ninterrupted\n")
    raise SystemExit(130) from None

if __name__ == "__main__":
    main()
