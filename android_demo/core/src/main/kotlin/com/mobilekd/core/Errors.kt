package com.mobilekd.core

/** Every error `core` raises: the message is meant to be shown to the user as is. */
open class MobileKdException(message: String, cause: Throwable? = null) : Exception(message, cause)

/** model.json is malformed, has missing or unknown fields, or is internally inconsistent. */
class ContractException(message: String) : MobileKdException(message)

/** The .tflite model's tensors disagree with its model.json. */
class ModelMismatchException(val problems: List<String>) :
    MobileKdException("model and model.json disagree:\n- " + problems.joinToString("\n- "))

/** An image file that cannot be decoded. */
class ImageDecodeException(message: String, cause: Throwable? = null) : MobileKdException(message, cause)

/** A search on an index that holds no images. */
class EmptyIndexException : MobileKdException("the index is empty: add images before searching")

/** Index file / vector problems (wrong dimension, corrupt file). */
class IndexException(message: String, cause: Throwable? = null) : MobileKdException(message, cause)

/** A prebuilt gallery (assets/gallery/) that is malformed or was made by another model. */
class GalleryException(message: String, cause: Throwable? = null) : MobileKdException(message, cause)
