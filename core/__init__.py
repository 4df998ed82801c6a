"""core: what every package of bgw-seg shares, and nothing else (the ground floor's ground floor).

numpy, OpenCV, click and tqdm only; it imports no other package of this project, and every
package may import it.

    errors.py   UserError, the base class of every error a user can fix, and first_line
    cli.py      the command-line convention of the five tools: one-line errors, -h, -v/-vv,
                --version, the progress bar
    version.py  the installed package's version
    atomic.py   atomic file writes (temporary name, fsync, rename)
    hashing.py  sha256_file: the one sha256 of a file
    registry.py Registry: named entries (rules, presets, datasets, GANs) with one did-you-mean error
    maps.py     probability_to_uint8: the one 8-bit quantisation of a probability map
    images.py   read_user_image: images users hand us, sized from their headers, skipped over a
                pixel limit, never half-decoded
"""
