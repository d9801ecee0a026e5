"""Image files: the formats read, and the check every image gets before
training or inference starts (the file is there, complete and readable)."""
import os
from typing import List, Sequence, Tuple

from bdd100k_ins_seg.cli import InputError

#: The file name endings read as images (any case): the formats OpenCV,
#: which loads the images, and PIL, which checks them, both read.
IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')


def is_image_name(name: str) -> bool:
    """Whether a file name ends with one of :data:`IMG_EXTENSIONS`, in any
    case (``a.JPG``, ``b.Png``)."""
    return name.lower().endswith(IMG_EXTENSIONS)


def list_images(folder: str) -> Tuple[List[str], List[str]]:
    """``(images, skipped)``: the sorted names of the image files of
    ``folder`` (:func:`is_image_name`) and of its other files, which are
    not read (sub-folders are neither)."""
    files = sorted(n for n in os.listdir(folder)
                   if not os.path.isdir(os.path.join(folder, n)))
    images = [n for n in files if is_image_name(n)]
    return images, [n for n in files if not is_image_name(n)]


def formats_read() -> str:
    """The extensions read, for messages: ``jpg/jpeg/png/...``."""
    return '/'.join(ext[1:] for ext in IMG_EXTENSIONS)


def skipped_message(folder: str, skipped: Sequence[str]) -> str:
    """One line saying which files of ``folder`` are not read, and why."""
    shown = ', '.join(skipped[:3]) + (', ...' if len(skipped) > 3 else '')
    files = 'file' if len(skipped) == 1 else 'files'
    return (f'{folder}: {len(skipped)} {files} skipped ({shown}): not '
            f'{formats_read()} (any case)')

#: Bytes read from a file's end to find its format's end marker.
_TAIL = 4096
#: The marker a complete file of the format ends with.
_END_MARKERS = {'JPEG': (b'\xff\xd9', 'JPEG end-of-image marker'),
                'PNG': (b'IEND', 'PNG IEND chunk')}


class DataFileError(InputError):
    """A data file that training or inference cannot use, found before the
    first iteration: ``path``, what the message calls it (``what``) and
    what is wrong (``why``)."""

    def __init__(self, path: str, why: str, what: str = '') -> None:
        super().__init__(what or path, why)
        self.path = path


class ImageFileError(DataFileError):
    """An image file that cannot be used (see :func:`check_image_file`)."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(path, why, f'image {path}')


class ImageNotFoundError(FileNotFoundError):
    """An image file that is not there (``path``)."""

    def __init__(self, path: str) -> None:
        super().__init__(f'image {path}: not found')
        self.path = path


def check_image_file(path: str) -> Tuple[int, int]:
    """The (width, height) of a complete image file, or
    :class:`ImageFileError` (:class:`ImageNotFoundError` where it is
    absent).

    Reads the header (the format and size) and the last 4 KiB: a JPEG or
    PNG must end with its end marker. A file cut short (an interrupted copy
    or download) has none; OpenCV would fill its missing rows with grey
    and go on, or fail hours into a run. Where the marker is not in the
    tail (data appended after it, as some cameras do) the pixels are
    decoded to decide.
    """
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as image:
            size, fmt = image.size, image.format
            marker = _END_MARKERS.get(fmt)
            if marker is None:
                return size
            fp = image.fp
            fp.seek(0, os.SEEK_END)
            fp.seek(max(0, fp.tell() - _TAIL))
            if marker[0] in fp.read(_TAIL):
                return size
            fp.seek(0)
            try:
                image.load()
            except (OSError, SyntaxError, ValueError) as e:
                raise ImageFileError(
                    path, f'cut short: no {marker[1]} ({e})') from None
            return size
    except FileNotFoundError:
        raise ImageNotFoundError(path) from None
    except UnidentifiedImageError:
        raise ImageFileError(path, 'not an image file') from None
    except ImageFileError:
        raise
    except (OSError, SyntaxError) as e:
        raise ImageFileError(
            path, f'cannot be read: {e or type(e).__name__}') from None


def turned_by_exif(path: str) -> bool:
    """Whether the file's EXIF orientation turns it by 90 degrees (OpenCV,
    which loads the images, applies it: width and height swap)."""
    from PIL import Image
    with Image.open(path) as image:
        return image.getexif().get(0x0112) in (5, 6, 7, 8)


def check_image_files(paths: Sequence[str],
                      what: str = 'images') -> List[Tuple[int, int]]:
    """:func:`check_image_file` for every path, in order (the first bad file
    raises): their (width, height). ~0.08 ms a BDD100K image from the page
    cache; a progress bar appears if it takes more than 2 s (a cold network
    file system)."""
    from tqdm import tqdm
    return [check_image_file(path) for path in tqdm(
        paths, desc=f'checking {what}', unit='img', delay=2, mininterval=1.0,
        leave=False)]
